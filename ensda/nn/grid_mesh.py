r"""Grid↔mesh connectivity: the encoder (grid → mesh) and decoder (mesh → grid) graphs.

As GraphCast's (Lam et al. 2023, Science 382), for a latitude–longitude grid and the
icosahedral multi-mesh of :mod:`ensda.nn.mesh`:

- **grid → mesh** (encoder): an edge from every grid point to every mesh node within
  chord distance :math:`0.6\,\ell_R` of it, :math:`\ell_R` the longest edge (chord) of the
  finest mesh level R. Every mesh node must receive from at least one grid point, else the
  (grid, refinement) pair is refused with a ``ValueError``. With the project's
  equiangular grids without poles (:class:`~ensda.testbeds.sphere.grid.LatLonGrid`),
  64×32 works with R ≤ 3 and 128×64 with R ≤ 4. R = 4 on 64×32 and R = 5 on 128×64 leave
  404 of 2,562 and 1,368 of 10,242 nodes without a sender, all equatorward of 71°, where
  the grid's cells are widest: the half cell diagonal at the equator, 3.98° / 1.99°,
  exceeds the radius, 2.84° / 1.42°. For R ≥ 1 every point of the sphere, hence every
  grid point, sends to at least one node: the circumradius (chord) of every face is at
  most 0.98 × the radius (at R = 0 up to 1.016 ×, so points near face centres would not).
- **mesh → grid** (decoder): the three vertices of the finest-level triangle containing
  each grid point, found by descending the refinement hierarchy (the 20 level-0 faces,
  then the four children of the face found, down to level R; the children tile their
  parent exactly, as midpoints lie on the parent's arcs). A point p lies in face (a, b, c)
  when its coordinates in the basis a, b, c, :math:`(\det[p,b,c], \det[a,p,c], \det[a,b,p])
  / \det[a,b,c]`, are all ≥ 0; at each level the face with the largest smallest
  coordinate is taken, so points on edges and vertices (coordinates 0 up to round-off) get
  one of their faces. Those coordinates, normalised to sum 1, are the (gnomonic)
  barycentric weights: ``normalise(w @ [a, b, c]) = p``.

Grid points are numbered row-major, latitude first: point ``j * n_lon + i`` is at
``(latitudes[j], longitudes[i])`` (the project's flat column index). Features are those of
:mod:`ensda.nn.mesh` — grid nodes (cos φ, sin λ, cos λ), edges (chord length, displacement
sender − receiver in the receiver's local frame) divided by each graph's longest chord.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from ensda.nn.graph import Graph
from ensda.nn.mesh import (
    TriangleMesh,
    edge_features,
    mesh_graph,
    mesh_hierarchy,
    node_features,
    unit_vectors,
)
from ensda.pytree import pytree_dataclass

RADIUS_FACTOR = 0.6
"""Encoder radius in units of the longest finest-level mesh edge (GraphCast's value)."""

_BLOCK_ELEMENTS = 1 << 22  # points x nodes per block of the radius search (32 MiB in float64)


@pytree_dataclass
class GridMeshGraphs:
    """The three graphs of a GraphCast-style network on a lat–lon grid.

    ``grid2mesh``: senders index grid points, receivers mesh nodes; ``mesh``: the
    multi-mesh; ``mesh2grid``: senders index mesh nodes, receivers grid points. The two
    bipartite graphs carry the grid's node features (so their ``n_nodes`` is the number
    of grid points); the mesh's are in ``mesh``.
    """

    grid2mesh: Graph
    mesh: Graph
    mesh2grid: Graph


def grid_points(latitudes, longitudes) -> np.ndarray:
    """Unit vectors (n_lat * n_lon, 3) of a lat–lon grid (degrees), row-major latitude first."""
    lat = np.asarray(latitudes, np.float64)
    lon = np.asarray(longitudes, np.float64)
    if lat.ndim != 1 or lon.ndim != 1 or lat.size < 1 or lon.size < 1:
        raise ValueError(
            f"grid latitudes and longitudes must be non-empty 1-D arrays, got {lat.shape}, "
            f"{lon.shape}"
        )
    if np.any(np.abs(lat) > 90.0):
        raise ValueError("grid latitudes must lie in [-90, 90] degrees")
    la, lo = np.meshgrid(np.deg2rad(lat), np.deg2rad(lon), indexing="ij")
    return unit_vectors(la, lo).reshape(-1, 3)


def _grid_node_features(points: np.ndarray) -> jnp.ndarray:
    lat = np.arcsin(np.clip(points[:, 2], -1.0, 1.0))
    lon = np.arctan2(points[:, 1], points[:, 0])
    return jnp.asarray(node_features(lat, lon), jnp.float32)


def longest_edge(mesh: TriangleMesh) -> float:
    """Longest edge (chord) of a mesh level."""
    e = mesh.edges
    return float(np.linalg.norm(mesh.vertices[e[:, 0]] - mesh.vertices[e[:, 1]], axis=-1).max())


def radius_edges(
    points: np.ndarray, nodes: np.ndarray, radius: float
) -> tuple[np.ndarray, np.ndarray]:
    """All pairs (point p, node n) with chord |p − n| ≤ ``radius``, sorted by node then point.

    Unit vectors in; vectorised in blocks of points (chord² = 2 − 2 p·n).
    """
    threshold = 1.0 - radius**2 / 2.0  # p·n >= threshold  <=>  chord <= radius
    block = max(1, _BLOCK_ELEMENTS // max(1, len(nodes)))
    ps, ns = [], []
    for start in range(0, len(points), block):
        i, j = np.nonzero(points[start : start + block] @ nodes.T >= threshold)
        ps.append(i + start)
        ns.append(j)
    p, n = np.concatenate(ps), np.concatenate(ns)
    order = np.lexsort((p, n))
    return p[order], n[order]


def _face_coordinates(points: np.ndarray, corners: np.ndarray) -> np.ndarray:
    """Coordinates (..., 3) of points (..., 3) in the bases of faces ``corners`` (..., 3, 3)
    up to the positive factor det[a, b, c]: (det[p,b,c], det[a,p,c], det[a,b,p])."""
    a, b, c = corners[..., 0, :], corners[..., 1, :], corners[..., 2, :]
    return np.stack(
        [
            np.einsum("...i,...i->...", points, np.cross(b, c)),
            np.einsum("...i,...i->...", points, np.cross(c, a)),
            np.einsum("...i,...i->...", points, np.cross(a, b)),
        ],
        axis=-1,
    )


def containing_faces(
    points: np.ndarray, meshes: tuple[TriangleMesh, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Face of the finest mesh containing each unit vector, and its barycentric weights.

    ``meshes``: levels 0..R from :func:`~ensda.nn.mesh.mesh_hierarchy`. Returns face
    indices (N,) into ``meshes[-1].faces`` and weights (N, 3) ≥ 0 summing to 1 (module
    docstring; round-off negatives on edges are set to 0).
    """
    points = np.asarray(points, np.float64)
    coarse = meshes[0]
    coords = _face_coordinates(
        points[:, None, :], coarse.vertices[coarse.faces][None]
    )  # (N, 20, 3)
    face = np.argmax(coords.min(axis=-1), axis=-1)
    for mesh in meshes[1:]:
        candidates = 4 * face[:, None] + np.arange(4)  # (N, 4)
        coords = _face_coordinates(points[:, None, :], mesh.vertices[mesh.faces[candidates]])
        face = candidates[np.arange(len(points)), np.argmax(coords.min(axis=-1), axis=-1)]
    fine = meshes[-1]
    w = np.clip(_face_coordinates(points, fine.vertices[fine.faces[face]]), 0.0, None)
    return face, w / w.sum(axis=-1, keepdims=True)


def _pair_name(latitudes, longitudes, refinement: int) -> str:
    grid = f"{np.size(longitudes)}x{np.size(latitudes)} grid (lon x lat)"
    return f"{grid} with mesh refinement {refinement}"


def grid2mesh_graph(latitudes, longitudes, refinement: int) -> Graph:
    """Encoder graph: grid point → every mesh node within 0.6 × the longest finest edge.

    Senders index grid points (row-major, latitude first), receivers the nodes of
    :func:`~ensda.nn.mesh.mesh_graph` (``refinement``); edges sorted by receiver, then
    sender. Node features are the grid's. Raises ``ValueError`` when a mesh node has no
    grid point within the radius (the grid is too coarse for the mesh).
    """
    meshes = mesh_hierarchy(refinement)
    points, nodes = grid_points(latitudes, longitudes), meshes[-1].vertices
    radius = RADIUS_FACTOR * longest_edge(meshes[-1])
    senders, receivers = radius_edges(points, nodes, radius)
    lonely = np.setdiff1d(np.arange(len(nodes)), receivers)
    if lonely.size:
        raise ValueError(
            f"grid2mesh: {_pair_name(latitudes, longitudes, refinement)} is not supported: "
            f"{lonely.size} of {len(nodes)} mesh nodes have no grid point within {RADIUS_FACTOR} x "
            f"the longest mesh edge ({np.degrees(2 * np.arcsin(radius / 2)):.3f} deg); use a finer "
            "grid or a coarser mesh"
        )
    return _bipartite_graph(senders, receivers, points[senders], nodes[receivers], points)


def mesh2grid_graph(latitudes, longitudes, refinement: int) -> Graph:
    """Decoder graph: the three vertices of the finest-level face containing each grid point.

    Edges ``3k, 3k+1, 3k+2`` go into grid point k (row-major, latitude first) from the
    vertices of its face (:func:`containing_faces`), in the face's order. Node features
    are the grid's.
    """
    meshes = mesh_hierarchy(refinement)
    points = grid_points(latitudes, longitudes)
    face, _ = containing_faces(points, meshes)
    senders = meshes[-1].faces[face].reshape(-1)
    receivers = np.repeat(np.arange(len(points)), 3)
    return _bipartite_graph(
        senders, receivers, meshes[-1].vertices[senders], points[receivers], points
    )


def _bipartite_graph(senders, receivers, sender_xyz, receiver_xyz, grid_xyz) -> Graph:
    """A grid↔mesh ``Graph``: edge features from the end points' positions, node features the
    grid's."""
    ef, _ = edge_features(sender_xyz, receiver_xyz)
    return Graph(
        senders=jnp.asarray(senders, jnp.int32),
        receivers=jnp.asarray(receivers, jnp.int32),
        edge_features=jnp.asarray(ef, jnp.float32),
        node_features=_grid_node_features(grid_xyz),
    )


def grid_mesh_graphs(latitudes, longitudes, refinement: int) -> GridMeshGraphs:
    """The encoder, processor and decoder graphs for a lat–lon grid (degrees) and a mesh."""
    return GridMeshGraphs(
        grid2mesh=grid2mesh_graph(latitudes, longitudes, refinement),
        mesh=mesh_graph(refinement),
        mesh2grid=mesh2grid_graph(latitudes, longitudes, refinement),
    )
