r"""GraphCast-style encode-process-decode network on the sphere (Flax NNX).

Fields on a lat-lon grid are encoded onto the icosahedral multi-mesh, processed there by
message passing, and decoded back to the grid (Lam et al. 2023, *Learning skillful
medium-range global weather forecasting*, Science 382, GraphCast; graph networks as in
Battaglia et al. 2018, *Relational inductive biases, deep learning, and graph networks*).
The three graphs are those of :class:`~ensda.nn.grid_mesh.GridMeshGraphs`: grid -> mesh
(``grid2mesh``, features :math:`f^{GM}`), the multi-mesh (``mesh``, :math:`f^{M}` on
nodes, :math:`f^{MM}` on edges) and mesh -> grid (``mesh2grid``, :math:`f^{MG}`); the grid
node features :math:`f^{G}` are those of ``grid2mesh``.

**Embedding** (every MLP of width ``latent`` ends in a LayerNorm, except the output MLP):

.. math::
    v^G = \mathrm{MLP}([x, f^G]),\quad v^M = \mathrm{MLP}(f^M),\quad
    e^{GM} = \mathrm{MLP}(f^{GM}),\quad e^{MM} = \mathrm{MLP}(f^{MM}),\quad
    e^{MG} = \mathrm{MLP}(f^{MG})

**Encoder** (grid -> mesh, one bipartite interaction network, residual on both sides):

.. math::
    e^{GM}_{gm} \leftarrow e^{GM}_{gm} + \mathrm{MLP}([e^{GM}_{gm}, v^G_g, v^M_m]),\quad
    v^M_m \leftarrow v^M_m + \mathrm{MLP}\Big(\Big[v^M_m,
        \tfrac{1}{d_m}\textstyle\sum_{g \to m} e^{GM}_{gm}\Big]\Big),\quad
    v^G_g \leftarrow v^G_g + \mathrm{MLP}(v^G_g)

**Processor** (``config.steps`` interaction networks on the multi-mesh, unshared weights):

.. math::
    e^{MM}_{sr} \leftarrow e^{MM}_{sr} + \mathrm{MLP}_k([e^{MM}_{sr}, v^M_s, v^M_r]),\quad
    v^M_r \leftarrow v^M_r + \mathrm{MLP}_k\Big(\Big[v^M_r, \textstyle\sum_{s \to r}
    e^{MM}_{sr}\Big]\Big)

**Decoder** (mesh -> grid, one bipartite interaction network, residual) and **output**:

.. math::
    e^{MG}_{mg} \leftarrow e^{MG}_{mg} + \mathrm{MLP}([e^{MG}_{mg}, v^M_m, v^G_g]),\quad
    v^G_g \leftarrow v^G_g + \mathrm{MLP}\Big(\Big[v^G_g, \textstyle\sum_{m \to g}
    e^{MG}_{mg}\Big]\Big),\quad
    y_g = \mathrm{MLP}_{out}(v^G_g)

The output MLP's last Linear starts at zero, so the network outputs 0 at initialisation
(an EDM denoiser then starts as its skip connection; a residual forecast model as
persistence). With ``conditional=True`` every LayerNorm is a
:class:`~ensda.nn.layers.ConditionalLayerNorm` driven by
:math:`c = \mathrm{MLP}_c(\mathrm{Fourier}(c_{noise}))`, :math:`c_{noise} = \log(\sigma)/4`,
exactly as in :class:`~ensda.nn.gnn.GraphNetwork`.

**Aggregation.** The encoder *averages* the incoming messages of a mesh node (divides the
sum by its in-degree :math:`d_m`); GraphCast sums them. On an equiangular lat-lon grid
the number of grid points within the encoder radius of a mesh node is an artefact of the
grid's crowding towards the poles: 2 to 128 on 64x32 with refinement 2-3 (polar nodes
receive up to ~60x more messages than equatorial ones). A sum would make the scale of the
node MLP's input (which is not normalised; the LayerNorm comes at the MLP's end) depend on
latitude by that factor and on the grid resolution; the mean is the average of the
messages over the mesh node's disc, comparable across latitudes and grids. The processor
sums (as GraphCast: the multi-mesh degrees, 6 per level a node belongs to, are structure,
not sampling) and so does the decoder (exactly 3 incoming edges per grid point, so sum and
mean differ by a constant).

As for :class:`~ensda.nn.gnn.GraphNetwork`, the graphs are an argument of the call, not
part of the module: the module only knows the feature sizes, and the graphs travel through
``jit`` / ``vmap`` as ordinary arrays (pass them with ``in_axes=None``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ensda.nn.gnn import GNNConfig, check_noise_level
from ensda.nn.graph import Graph
from ensda.nn.grid_mesh import GridMeshGraphs
from ensda.nn.layers import MLP, FourierEmbedding, InteractionNetwork, concat_broadcast

_NAMES = ("grid2mesh", "mesh", "mesh2grid")


def _feature_sizes(graphs: GridMeshGraphs) -> dict[str, int]:
    return {
        "grid node": graphs.grid2mesh.node_features.shape[-1],
        "mesh node": graphs.mesh.node_features.shape[-1],
        "grid2mesh edge": graphs.grid2mesh.edge_features.shape[-1],
        "mesh edge": graphs.mesh.edge_features.shape[-1],
        "mesh2grid edge": graphs.mesh2grid.edge_features.shape[-1],
    }


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


class SphereGraphNetwork(nnx.Module):
    """Grid -> mesh -> grid GNN mapping grid fields ``(..., n_grid, in)`` to ``(..., n_grid, out)``.

    ``graphs`` at construction gives only the feature sizes; the graph arrays are passed
    at each call. Grid points are numbered as in :mod:`ensda.nn.grid_mesh` (row-major,
    latitude first), so a field ``(..., n_lat, n_lon)`` enters as
    ``field.reshape(..., n_lat * n_lon, 1)``. With ``conditional=True`` the call needs
    ``noise_level`` (``(...)``, broadcasting to the batch shape).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        graphs: GridMeshGraphs,
        config: GNNConfig,
        *,
        conditional: bool = True,
        rngs: nnx.Rngs,
    ):
        if in_features < 1 or out_features < 1:
            raise ValueError(
                f"SphereGraphNetwork: in/out features must be >= 1, got {in_features}, "
                f"{out_features}"
            )
        if not isinstance(graphs, GridMeshGraphs):
            raise TypeError(
                f"SphereGraphNetwork: graphs must be a GridMeshGraphs, got {type(graphs).__name__}"
            )
        sizes = _feature_sizes(graphs)
        missing = [k for k, n in sizes.items() if n < 1 and k != "grid node"]
        if missing:
            raise ValueError(
                "SphereGraphNetwork: the graphs need at least one feature for: "
                f"{', '.join(missing)}"
            )
        self.in_features = in_features
        self.out_features = out_features
        self.feature_sizes = tuple(sizes.items())
        self.config = config
        self.conditional = conditional
        latent, hl = config.latent, config.hidden_layers
        cond_features = latent if conditional else None
        if conditional:
            self.fourier = FourierEmbedding(config.n_frequencies)
            self.cond_mlp = MLP(
                self.fourier.out_features,
                latent,
                latent,
                hidden_layers=hl,
                layer_norm=False,
                rngs=rngs,
            )
        kw = {"hidden_layers": hl, "cond_features": cond_features, "rngs": rngs}
        # embeddings
        self.grid_embedding = MLP(in_features + sizes["grid node"], latent, latent, **kw)
        self.mesh_embedding = MLP(sizes["mesh node"], latent, latent, **kw)
        self.grid2mesh_edge_embedding = MLP(sizes["grid2mesh edge"], latent, latent, **kw)
        self.mesh_edge_embedding = MLP(sizes["mesh edge"], latent, latent, **kw)
        self.mesh2grid_edge_embedding = MLP(sizes["mesh2grid edge"], latent, latent, **kw)
        # grid -> mesh; the grid nodes (senders) get their own residual update
        self.encoder = InteractionNetwork(latent, aggregation="mean", **kw)
        self.grid_update = MLP(latent, latent, latent, **kw)
        self.processor = nnx.List([InteractionNetwork(latent, **kw) for _ in range(config.steps)])
        # mesh -> grid, then the output MLP (no LayerNorm, last Linear zero)
        self.decoder = InteractionNetwork(latent, **kw)
        self.output = MLP(
            latent, latent, out_features, hidden_layers=hl, layer_norm=False, rngs=rngs
        )
        last = self.output.layers[-1]
        last.kernel[...] = jnp.zeros_like(last.kernel[...])
        last.bias[...] = jnp.zeros_like(last.bias[...])

    def _check(
        self, graphs: GridMeshGraphs, nodes: jax.Array, noise_level: jax.Array | None
    ) -> None:
        if not isinstance(graphs, GridMeshGraphs):
            raise TypeError(
                f"SphereGraphNetwork: graphs must be a GridMeshGraphs, got {type(graphs).__name__}"
            )
        sizes = _feature_sizes(graphs)
        if tuple(sizes.items()) != self.feature_sizes:
            raise ValueError(
                f"SphereGraphNetwork: built for feature sizes {dict(self.feature_sizes)}, the "
                f"graphs have {sizes}"
            )
        for name in _NAMES:
            g: Graph = getattr(graphs, name)
            n_edges = g.senders.shape[0]
            if (
                g.senders.shape != (n_edges,)
                or g.receivers.shape != (n_edges,)
                or g.edge_features.shape[0] != n_edges
            ):
                raise ValueError(
                    f"SphereGraphNetwork: graphs.{name} has senders {g.senders.shape}, receivers "
                    f"{g.receivers.shape}, edge_features {g.edge_features.shape}: need (E,), "
                    "(E,), (E, Fe)"
                )
        n_grid, n_mesh = graphs.grid2mesh.n_nodes, graphs.mesh.n_nodes
        if graphs.mesh2grid.n_nodes != n_grid:
            raise ValueError(
                f"SphereGraphNetwork: graphs.grid2mesh has {n_grid} grid nodes, graphs.mesh2grid "
                f"{graphs.mesh2grid.n_nodes}: the encoder and decoder must be built for the same "
                "grid"
            )
        # index ranges: only where the arrays are known (outside jit, or closed over)
        for name, index, bound in (
            ("grid2mesh.senders", graphs.grid2mesh.senders, n_grid),
            ("grid2mesh.receivers", graphs.grid2mesh.receivers, n_mesh),
            ("mesh.senders", graphs.mesh.senders, n_mesh),
            ("mesh.receivers", graphs.mesh.receivers, n_mesh),
            ("mesh2grid.senders", graphs.mesh2grid.senders, n_mesh),
            ("mesh2grid.receivers", graphs.mesh2grid.receivers, n_grid),
        ):
            # np.asarray first: a jnp reduction is staged (a tracer) under jit even on constants
            if (
                _is_concrete(index)
                and index.size
                and not (0 <= np.asarray(index).min() and np.asarray(index).max() < bound)
            ):
                raise ValueError(
                    f"SphereGraphNetwork: graphs.{name} must lie in [0, {bound}) (the node count)"
                )
        if nodes.ndim < 2 or nodes.shape[-2] != n_grid or nodes.shape[-1] != self.in_features:
            raise ValueError(
                f"SphereGraphNetwork: nodes must have shape (..., {n_grid}, {self.in_features}) "
                f"(n_grid = graphs.grid2mesh.n_nodes, in_features), got {nodes.shape}"
            )
        check_noise_level("SphereGraphNetwork", self.conditional, nodes, noise_level)

    def __call__(
        self, graphs: GridMeshGraphs, nodes: jax.Array, noise_level: jax.Array | None = None
    ) -> jax.Array:
        """Apply the network: ``nodes (..., n_grid, in)``, ``noise_level (...)`` ->
        ``(..., n_grid, out)``."""
        self._check(graphs, nodes, noise_level)
        nodes = jnp.asarray(nodes, jnp.float32)
        g2m, mesh, m2g = graphs.grid2mesh, graphs.mesh, graphs.mesh2grid
        cond = None
        if self.conditional:
            # (..., C) -> (..., 1, C): broadcasts over the node / edge axis.
            cond = self.cond_mlp(self.fourier(noise_level))[..., None, :]
        v_grid = self.grid_embedding(concat_broadcast(nodes, g2m.node_features), cond)
        v_mesh = self.mesh_embedding(mesh.node_features, cond)
        e_g2m = self.grid2mesh_edge_embedding(g2m.edge_features, cond)
        e_mesh = self.mesh_edge_embedding(mesh.edge_features, cond)
        e_m2g = self.mesh2grid_edge_embedding(m2g.edge_features, cond)
        # encoder: edges and mesh nodes from the interaction network, grid nodes node-wise
        _, v_mesh = self.encoder(g2m.senders, g2m.receivers, e_g2m, v_grid, v_mesh, cond)
        v_grid = v_grid + self.grid_update(v_grid, cond)
        for block in self.processor:
            e_mesh, v_mesh = block(mesh.senders, mesh.receivers, e_mesh, v_mesh, v_mesh, cond)
        _, v_grid = self.decoder(m2g.senders, m2g.receivers, e_m2g, v_mesh, v_grid, cond)
        return self.output(v_grid)
