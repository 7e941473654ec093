r"""The icosahedral multi-mesh (GraphCast's processor graph) as arrays.

Construction (Lam et al. 2023, *Learning skillful medium-range global weather
forecasting*, Science 382, GraphCast):

1. **Level 0**: the regular icosahedron on the unit sphere, the 12 points
   :math:`(0, \pm 1, \pm\phi)`, :math:`(\pm 1, \pm\phi, 0)`, :math:`(\pm\phi, 0, \pm 1)`
   (:math:`\phi` the golden ratio) divided by :math:`\sqrt{1 + \phi^2}`. Its 30 edges are the
   vertex pairs at the smallest distance and its 20 faces the triangles of edges; every face
   is ordered counter-clockwise seen from outside (:math:`\det[a, b, c] > 0`). Edges
   subtend :math:`\arctan 2 \approx 63.43°`.
2. **Refinement** r → r+1: every triangle (a, b, c) is split into four, (a, ab, ca),
   (ab, b, bc), (ca, bc, c), (ab, bc, ca), where ab is the midpoint of a and b projected to
   the unit sphere (it lies on the great-circle arc ab). Midpoints shared by two faces are
   made once. The vertices of level r come first at level r+1 (their indices are kept),
   the new ones follow in the lexicographic order of their (sorted) edge; the children of
   face f are faces 4f .. 4f+3, each oriented as f. Level r has
   :math:`V = 10 \cdot 4^r + 2` vertices, :math:`E = 30 \cdot 4^r` edges and
   :math:`F = 20 \cdot 4^r` faces (162 / 642 / 2,562 / 10,242 vertices at r = 2 / 3 / 4 / 5).
3. **Multi-mesh** of levels 0..R: the vertices of level R with the edges of every level
   (each level's vertices are a prefix of level R's), both directions: a coarse edge links
   two nodes that are :math:`2^{R-r}` fine edges apart and carries long-range messages.
   :math:`2 \cdot 30 \cdot (4^{R+1} - 1) / 3` directed edges: 1,260 / 5,100 / 20,460 at
   R = 2 / 3 / 4.

Features (GraphCast's, normalised so they are O(1)):

- node: :math:`(\cos\varphi, \sin\lambda, \cos\lambda)` (latitude φ, longitude λ);
- edge s → r: :math:`(|x_s - x_r|,\ M_r (x_s - x_r)) / L`, Fe = 4: the **chord** length
  and the 3-D displacement of the sender from the receiver expressed in the receiver's
  local frame, divided by the longest chord L of the graph. The frame matrix
  :math:`M_r = R_y(\varphi_r) R_z(-\lambda_r)` rotates the receiver onto the reference point
  (φ, λ) = (0, 0), i.e. :math:`M_r x_r = (1, 0, 0)`; its rows are the receiver's local
  up, east and north unit vectors, so the components are (radial, eastward, northward).

The grid↔mesh graphs of the encoder and decoder are in :mod:`ensda.nn.grid_mesh`.
"""

from __future__ import annotations

import dataclasses
import itertools

import jax.numpy as jnp
import numpy as np

from ensda.nn.graph import Graph


@dataclasses.dataclass(frozen=True, eq=False)
class TriangleMesh:
    """A triangulated unit sphere: ``vertices`` (V, 3) float64 unit vectors and ``faces``
    (F, 3) int64 vertex indices, each face counter-clockwise seen from outside."""

    vertices: np.ndarray
    faces: np.ndarray

    @property
    def edges(self) -> np.ndarray:
        """Undirected edges (E, 2), ``i < j``, sorted lexicographically."""
        return _face_edges(self.faces)


def _face_edges(faces: np.ndarray) -> np.ndarray:
    pairs = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    return np.unique(np.sort(pairs, axis=1), axis=0)


def icosahedron() -> TriangleMesh:
    """The regular icosahedron inscribed in the unit sphere (level 0; module docstring)."""
    phi = (1.0 + np.sqrt(5.0)) / 2.0
    pts = []
    for s1, s2 in itertools.product((-1.0, 1.0), repeat=2):
        pts += [(0.0, s1, s2 * phi), (s1, s2 * phi, 0.0), (s2 * phi, 0.0, s1)]
    v = np.asarray(pts) / np.sqrt(1.0 + phi**2)
    d = np.linalg.norm(v[:, None] - v[None], axis=-1)
    adjacent = np.isclose(d, d[d > 1e-9].min())
    faces = []
    for a, b, c in itertools.combinations(range(len(v)), 3):
        if adjacent[a, b] and adjacent[b, c] and adjacent[a, c]:
            faces.append((a, b, c) if np.linalg.det(v[[a, b, c]]) > 0 else (a, c, b))
    return TriangleMesh(vertices=v, faces=np.asarray(faces, np.int64))


def split_triangles(mesh: TriangleMesh) -> TriangleMesh:
    """One refinement step: every face into four, midpoints projected to the sphere.

    The input vertices keep their indices; the children of face f are 4f .. 4f+3.
    """
    v, f = mesh.vertices, mesh.faces
    pairs = np.stack([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]], axis=1)  # (F, 3, 2): ab, bc, ca
    edges, inverse = np.unique(np.sort(pairs, axis=-1).reshape(-1, 2), axis=0, return_inverse=True)
    mid = v[edges[:, 0]] + v[edges[:, 1]]
    mid /= np.linalg.norm(mid, axis=-1, keepdims=True)
    m = (len(v) + inverse.reshape(-1, 3)).T  # indices of ab, bc, ca per face
    a, b, c = f.T
    ab, bc, ca = m
    children = np.stack(
        [np.stack(t, axis=-1) for t in ((a, ab, ca), (ab, b, bc), (ca, bc, c), (ab, bc, ca))],
        axis=1,
    )  # (F, 4, 3)
    return TriangleMesh(vertices=np.concatenate([v, mid]), faces=children.reshape(-1, 3))


def mesh_hierarchy(refinement: int) -> tuple[TriangleMesh, ...]:
    """The meshes of levels 0..``refinement`` (``refinement + 1`` of them)."""
    if not (isinstance(refinement, int) and refinement >= 0):
        raise ValueError(f"mesh refinement must be an int >= 0, got {refinement!r}")
    meshes = [icosahedron()]
    for _ in range(refinement):
        meshes.append(split_triangles(meshes[-1]))
    return tuple(meshes)


def multimesh_edges(meshes: tuple[TriangleMesh, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Directed edges ``(senders, receivers)`` of the union of all levels' edges.

    Both directions of every edge, each directed edge once, sorted by receiver then sender.
    Indices refer to the finest mesh's vertices.
    """
    und = np.concatenate([m.edges for m in meshes])
    s = np.concatenate([und[:, 0], und[:, 1]])
    r = np.concatenate([und[:, 1], und[:, 0]])
    n = len(meshes[-1].vertices)
    key = np.unique(r * n + s)
    return key % n, key // n


def lat_lon(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Latitude and longitude in radians of unit vectors (..., 3)."""
    return np.arcsin(np.clip(points[..., 2], -1.0, 1.0)), np.arctan2(points[..., 1], points[..., 0])


def unit_vectors(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Unit vectors (..., 3) of latitudes and longitudes in radians (broadcasting)."""
    lat, lon = np.broadcast_arrays(np.asarray(lat, np.float64), np.asarray(lon, np.float64))
    return np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], axis=-1)


def node_features(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Node features (..., 3): cos φ, sin λ, cos λ (radians in)."""
    return np.stack([np.cos(lat), np.sin(lon), np.cos(lon)], axis=-1)


def local_frames(points: np.ndarray) -> np.ndarray:
    r"""Rotations (..., 3, 3) taking each unit vector to the reference point (1, 0, 0).

    :math:`M = R_y(\varphi) R_z(-\lambda)`: rows are the local up
    :math:`(\cos\varphi\cos\lambda, \cos\varphi\sin\lambda, \sin\varphi)`, east
    :math:`(-\sin\lambda, \cos\lambda, 0)` and north
    :math:`(-\sin\varphi\cos\lambda, -\sin\varphi\sin\lambda, \cos\varphi)` unit vectors.
    """
    lat, lon = lat_lon(points)
    cp, sp, cl, sl = np.cos(lat), np.sin(lat), np.cos(lon), np.sin(lon)
    zero = np.zeros_like(lat)
    up = np.stack([cp * cl, cp * sl, sp], axis=-1)
    east = np.stack([-sl, cl, zero], axis=-1)
    north = np.stack([-sp * cl, -sp * sl, cp], axis=-1)
    return np.stack([up, east, north], axis=-2)


def edge_features(sender_pos: np.ndarray, receiver_pos: np.ndarray) -> tuple[np.ndarray, float]:
    """Edge features (E, 4) and the scale L they were divided by (module docstring).

    ``sender_pos``, ``receiver_pos``: unit vectors (E, 3) of each edge's ends. Features are
    the chord length and the displacement ``sender - receiver`` in the receiver's
    :func:`local_frames`, all divided by L, the longest chord of these edges.
    """
    d = sender_pos - receiver_pos
    length = np.linalg.norm(d, axis=-1)
    scale = float(length.max())
    local = np.einsum("eij,ej->ei", local_frames(receiver_pos), d)
    return np.concatenate([length[:, None], local], axis=-1) / scale, scale


def mesh_graph(refinement: int) -> Graph:
    """The multi-mesh of levels 0..``refinement`` as a :class:`Graph` (float32, int32).

    Nodes are the finest level's vertices (:func:`mesh_hierarchy`), node features
    (cos φ, sin λ, cos λ); edges from :func:`multimesh_edges` with :func:`edge_features`
    (normalised by the longest multi-mesh chord, a level-0 edge).
    """
    meshes = mesh_hierarchy(refinement)
    v = meshes[-1].vertices
    senders, receivers = multimesh_edges(meshes)
    ef, _ = edge_features(v[senders], v[receivers])
    return Graph(
        senders=jnp.asarray(senders, jnp.int32),
        receivers=jnp.asarray(receivers, jnp.int32),
        edge_features=jnp.asarray(ef, jnp.float32),
        node_features=jnp.asarray(node_features(*lat_lon(v)), jnp.float32),
    )
