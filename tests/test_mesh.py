"""Icosahedral multi-mesh and grid<->mesh graphs: counts, geometry, features, connectivity."""

import jax
import numpy as np
import pytest

from ensda.nn import Graph
from ensda.nn.grid_mesh import (
    RADIUS_FACTOR,
    GridMeshGraphs,
    containing_faces,
    grid2mesh_graph,
    grid_mesh_graphs,
    grid_points,
    longest_edge,
    mesh2grid_graph,
)
from ensda.nn.mesh import (
    edge_features,
    icosahedron,
    lat_lon,
    local_frames,
    mesh_graph,
    mesh_hierarchy,
    multimesh_edges,
    split_triangles,
    unit_vectors,
)
from ensda.testbeds.sphere.grid import LatLonGrid

LEVELS = mesh_hierarchy(5)
# GraphCast (Lam et al. 2023): refinement 2 -> 162 nodes, 3 -> 642, 4 -> 2,562, 5 -> 10,242;
# multi-mesh directed edges 1,260 / 5,100 / 20,460 at refinement 2 / 3 / 4.
NODES = {2: 162, 3: 642, 4: 2562, 5: 10242}
MULTIMESH_EDGES = {2: 1260, 3: 5100, 4: 20460}


def _angles_deg(x, y):
    return np.degrees(np.arccos(np.clip(np.sum(x * y, axis=-1), -1.0, 1.0)))


@pytest.mark.parametrize("refinement", [2, 3, 4, 5])
def test_node_counts(refinement):
    assert len(LEVELS[refinement].vertices) == NODES[refinement]


@pytest.mark.parametrize("refinement", [2, 3, 4])
def test_multimesh_graph_counts_and_dtypes(refinement):
    g = mesh_graph(refinement)
    assert isinstance(g, Graph)
    assert g.n_nodes == NODES[refinement] and g.n_edges == MULTIMESH_EDGES[refinement]
    assert g.senders.dtype == np.int32 and g.receivers.dtype == np.int32
    assert g.edge_features.shape == (g.n_edges, 4) and g.edge_features.dtype == np.float32
    assert g.node_features.shape == (g.n_nodes, 3) and g.node_features.dtype == np.float32


def test_icosahedron_reference_geometry():
    ico = icosahedron()
    assert ico.vertices.shape == (12, 3) and ico.faces.shape == (20, 3) and len(ico.edges) == 30
    # every vertex has degree 5; every edge subtends arctan(2) = 63.4349 deg
    assert np.all(np.bincount(ico.edges.ravel()) == 5)
    e = ico.edges
    np.testing.assert_allclose(
        _angles_deg(ico.vertices[e[:, 0]], ico.vertices[e[:, 1]]),
        np.degrees(np.arctan(2.0)),
        atol=1e-12,
    )
    # the chord of the unit-sphere icosahedron is 1 / sin(2 pi / 5) = 1.0514622
    np.testing.assert_allclose(longest_edge(ico), 1.0 / np.sin(2 * np.pi / 5), rtol=1e-12)


@pytest.mark.parametrize("level", range(6))
def test_level_topology_and_orientation(level):
    m = LEVELS[level]
    v, e, f = len(m.vertices), len(m.edges), len(m.faces)
    assert (v, e, f) == (10 * 4**level + 2, 30 * 4**level, 20 * 4**level)
    assert v - e + f == 2  # Euler's formula
    np.testing.assert_allclose(np.linalg.norm(m.vertices, axis=-1), 1.0, atol=1e-14)
    # closed surface: each undirected edge in exactly two faces, once in each direction
    directed = np.concatenate([m.faces[:, [0, 1]], m.faces[:, [1, 2]], m.faces[:, [2, 0]]])
    assert len(np.unique(directed, axis=0)) == 3 * f
    assert len(np.unique(np.sort(directed, axis=1), axis=0)) == e
    # consistently oriented outwards
    assert np.all(np.linalg.det(m.vertices[m.faces]) > 0)


@pytest.mark.parametrize("level", range(5))
def test_vertices_are_a_prefix_and_children_refine_parents(level):
    coarse, fine = LEVELS[level], LEVELS[level + 1]
    assert np.array_equal(fine.vertices[: len(coarse.vertices)], coarse.vertices)
    # child 4f + k: k < 3 keeps corner k of face f
    for k in range(3):
        assert np.array_equal(fine.faces[k::4, k], coarse.faces[:, k])
    # new vertices are the projected midpoints of the coarse edges, each made once
    e = coarse.edges
    mid = coarse.vertices[e[:, 0]] + coarse.vertices[e[:, 1]]
    np.testing.assert_allclose(
        fine.vertices[len(coarse.vertices) :],
        mid / np.linalg.norm(mid, axis=-1, keepdims=True),
        atol=1e-15,
    )


def test_edge_lengths_per_level():
    # level 1: halves of the level-0 edges (arctan(2)/2 = 31.7175 deg) and the inner edges
    # joining midpoints (36 deg, the icosidodecahedron's edge), 60 of each
    m = LEVELS[1]
    ang = _angles_deg(m.vertices[m.edges[:, 0]], m.vertices[m.edges[:, 1]])
    values, counts = np.unique(np.round(ang, 9), return_counts=True)
    np.testing.assert_allclose(values, [np.degrees(np.arctan(2.0)) / 2, 36.0], atol=1e-9)
    assert list(counts) == [60, 60]
    for r, m in enumerate(LEVELS):
        ang = _angles_deg(m.vertices[m.edges[:, 0]], m.vertices[m.edges[:, 1]])
        # the shortest edges are the pieces of the level-0 edges, arctan(2) / 2^r
        np.testing.assert_allclose(ang.min(), np.degrees(np.arctan(2.0)) / 2**r, rtol=1e-9)
        assert ang.max() / ang.min() < 1.2  # midpoint refinement: 1.135, 1.179, ..., 1.195


def test_encoder_radius_covers_every_face_from_level_one():
    # the circumcentre of a face is the point of it farthest from all its corners; for
    # R >= 1 it lies within 0.6 x the longest edge of a corner, at R = 0 it does not
    ratios = []
    for m in LEVELS:
        a, b, c = np.moveaxis(m.vertices[m.faces], 1, 0)
        centre = np.cross(b - a, c - a)
        centre /= np.linalg.norm(centre, axis=-1, keepdims=True)
        ratios.append(np.linalg.norm(centre - a, axis=-1).max() / (RADIUS_FACTOR * longest_edge(m)))
    np.testing.assert_allclose(ratios, [1.0158, 0.9785, 0.9665, 0.9633, 0.9625, 0.9623], atol=1e-4)


@pytest.mark.parametrize("refinement", [0, 2, 3])
def test_multimesh_edges_are_the_union_of_levels(refinement):
    s, r = multimesh_edges(LEVELS[: refinement + 1])
    pairs = set(zip(s.tolist(), r.tolist()))
    assert len(pairs) == len(s)  # no duplicate directed edges
    assert np.all(s != r)  # no self-loops
    assert pairs == {(b, a) for a, b in pairs}  # symmetric
    expected = {(int(i), int(j)) for m in LEVELS[: refinement + 1] for i, j in m.edges}
    assert pairs == expected | {(j, i) for i, j in expected}
    assert np.all(np.diff(r) >= 0)  # sorted by receiver
    # a node born at level k has 6 neighbours at every level k..R (the 12 level-0 nodes 5)
    deg = np.bincount(r, minlength=len(LEVELS[refinement].vertices))
    born = np.searchsorted([len(m.vertices) for m in LEVELS], np.arange(len(deg)), side="right")
    expected_deg = np.where(born == 0, 5 * (refinement + 1), 6 * (refinement - born + 1))
    assert np.array_equal(deg, expected_deg)


def test_local_frames_map_to_reference_and_are_rotations():
    rng = np.random.default_rng(0)
    p = rng.normal(size=(500, 3))
    p /= np.linalg.norm(p, axis=-1, keepdims=True)
    m = local_frames(p)
    np.testing.assert_allclose(
        np.einsum("nij,nj->ni", m, p), np.tile([1.0, 0.0, 0.0], (500, 1)), atol=1e-14
    )
    np.testing.assert_allclose(
        m @ np.swapaxes(m, -1, -2), np.broadcast_to(np.eye(3), m.shape), atol=1e-14
    )
    np.testing.assert_allclose(np.linalg.det(m), 1.0, atol=1e-14)
    # the second and third components are eastward and northward: the tangents
    # dp/dlon = cos(lat) * east and dp/dlat = north map to (0, cos lat, 0) and (0, 0, 1)
    lat, lon = lat_lon(p)
    zero = np.zeros_like(lat)
    d_lon = np.stack([-np.cos(lat) * np.sin(lon), np.cos(lat) * np.cos(lon), zero], -1)
    d_lat = np.stack([-np.sin(lat) * np.cos(lon), -np.sin(lat) * np.sin(lon), np.cos(lat)], -1)
    np.testing.assert_allclose(
        np.einsum("nij,nj->ni", m, d_lon), np.stack([zero, np.cos(lat), zero], -1), atol=1e-14
    )
    np.testing.assert_allclose(
        np.einsum("nij,nj->ni", m, d_lat), np.tile([0.0, 0.0, 1.0], (500, 1)), atol=1e-14
    )
    # a small step east has a positive second component
    step = np.einsum("nij,nj->ni", m, unit_vectors(lat, lon + 1e-3) - p)
    assert np.all(step[:, 1] > 0)


def test_mesh_edge_and_node_features():
    refinement = 3
    g = mesh_graph(refinement)
    v = LEVELS[refinement].vertices
    s, r = np.asarray(g.senders), np.asarray(g.receivers)
    ef = np.asarray(g.edge_features, np.float64)
    d = v[s] - v[r]
    scale = longest_edge(LEVELS[0])  # the longest multi-mesh edge is a level-0 edge
    np.testing.assert_allclose(ef[:, 0], np.linalg.norm(d, axis=-1) / scale, rtol=1e-6)
    assert ef[:, 0].max() == pytest.approx(1.0, abs=1e-6)
    # rotating the feature back to the global frame gives the displacement
    back = np.einsum("nji,nj->ni", local_frames(v[r]), ef[:, 1:] * scale)
    np.testing.assert_allclose(back, d, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(ef[:, 1:], axis=-1), ef[:, 0], atol=1e-6)
    lat, lon = np.arcsin(v[:, 2]), np.arctan2(v[:, 1], v[:, 0])
    np.testing.assert_allclose(
        np.asarray(g.node_features),
        np.stack([np.cos(lat), np.sin(lon), np.cos(lon)], -1),
        atol=1e-6,
    )
    # float64 helper: features of a single edge along the receiver's meridian point north
    f, sc = edge_features(
        unit_vectors([[0.1]], [[0.0]]).reshape(1, 3), unit_vectors([[0.0]], [[0.0]]).reshape(1, 3)
    )
    assert f[0, 0] == pytest.approx(1.0) and f[0, 3] > 0.99 and abs(f[0, 2]) < 1e-15
    assert sc == pytest.approx(2 * np.sin(0.05))


def _grid(n_lon, n_lat):
    g = LatLonGrid(n_lon, n_lat)
    return g.latitudes, g.longitudes


SUPPORTED = [((64, 32), 2), ((64, 32), 3), ((128, 64), 3), ((128, 64), 4)]


@pytest.mark.parametrize(("shape", "refinement"), SUPPORTED)
def test_grid2mesh_radius_and_coverage(shape, refinement):
    lat, lon = _grid(*shape)
    g = grid2mesh_graph(lat, lon, refinement)
    pts, nodes = grid_points(lat, lon), LEVELS[refinement].vertices
    n_grid = shape[0] * shape[1]
    assert g.n_nodes == n_grid and g.node_features.shape == (n_grid, 3)
    s, r = np.asarray(g.senders), np.asarray(g.receivers)
    assert s.max() < n_grid and r.max() < len(nodes)
    assert np.all(np.bincount(r, minlength=len(nodes)) >= 1)  # every mesh node receives
    assert np.all(
        np.bincount(s, minlength=n_grid) >= 1
    )  # every grid point sends (radius > circumradius)
    assert len(set(zip(s.tolist(), r.tolist()))) == len(s)
    # exactly the pairs within the radius: compared with an independent great-circle count
    radius_deg = np.degrees(2 * np.arcsin(RADIUS_FACTOR * longest_edge(LEVELS[refinement]) / 2))
    ang = _angles_deg(pts[s], nodes[r])
    assert ang.max() <= radius_deg + 1e-9
    glat, glon = np.meshgrid(np.deg2rad(lat), np.deg2rad(lon), indexing="ij")
    nlat, nlon = lat_lon(nodes)
    inside = 0
    for k in range(0, len(nodes), 256):
        c = np.sin(glat.ravel()[:, None]) * np.sin(nlat[k : k + 256]) + np.cos(
            glat.ravel()[:, None]
        ) * np.cos(nlat[k : k + 256]) * np.cos(glon.ravel()[:, None] - nlon[k : k + 256])
        inside += int((np.degrees(np.arccos(np.clip(c, -1, 1))) <= radius_deg - 1e-9).sum())
    assert inside <= len(s) <= inside + int((np.abs(ang - radius_deg) < 1e-8).sum())
    # features: displacement rotated back; the grid node features
    ef = np.asarray(g.edge_features, np.float64)
    d = pts[s] - nodes[r]
    scale = np.linalg.norm(d, axis=-1).max()
    np.testing.assert_allclose(
        np.einsum("nji,nj->ni", local_frames(nodes[r]), ef[:, 1:] * scale), d, atol=1e-6
    )
    np.testing.assert_allclose(ef[:, 0], np.linalg.norm(d, axis=-1) / scale, atol=1e-6)
    nf = np.asarray(g.node_features).reshape(shape[1], shape[0], 3)
    np.testing.assert_allclose(nf[:, 0, 0], np.cos(np.deg2rad(lat)), atol=1e-6)
    np.testing.assert_allclose(nf[0, :, 1], np.sin(np.deg2rad(lon)), atol=1e-6)
    np.testing.assert_allclose(nf[0, :, 2], np.cos(np.deg2rad(lon)), atol=1e-6)


@pytest.mark.parametrize(("shape", "refinement"), [((64, 32), 4), ((64, 32), 5), ((128, 64), 5)])
def test_grid2mesh_refuses_too_fine_meshes(shape, refinement):
    lat, lon = _grid(*shape)
    with pytest.raises(
        ValueError, match=rf"{shape[0]}x{shape[1]} grid .*refinement {refinement} is not supported"
    ):
        grid2mesh_graph(lat, lon, refinement)


@pytest.mark.parametrize(("shape", "refinement"), SUPPORTED + [((64, 32), 5)])
def test_mesh2grid_three_vertices_of_containing_face(shape, refinement):
    lat, lon = _grid(*shape)
    g = mesh2grid_graph(lat, lon, refinement)
    pts, fine = grid_points(lat, lon), LEVELS[refinement]
    n_grid = len(pts)
    assert g.n_nodes == n_grid and g.n_edges == 3 * n_grid
    s, r = np.asarray(g.senders).reshape(-1, 3), np.asarray(g.receivers).reshape(-1, 3)
    assert np.array_equal(r, np.repeat(np.arange(n_grid), 3).reshape(-1, 3))  # exactly 3 incoming
    assert np.all((s[:, 0] != s[:, 1]) & (s[:, 1] != s[:, 2]) & (s[:, 0] != s[:, 2]))
    # the three senders are a face of the finest level, and that face contains the point
    face_keys = {tuple(sorted(f)) for f in fine.faces.tolist()}
    assert all(tuple(sorted(t)) in face_keys for t in s.tolist())
    corners = fine.vertices[s]
    det = np.linalg.det(corners)
    # coordinates of each point in its face's corner basis: p = coords @ corners
    coords = np.linalg.solve(np.swapaxes(corners, 1, 2), pts[..., None])[..., 0]
    assert np.all(det > 0) and np.all(coords >= -1e-12)
    # decoder edges are short: within the face's extent
    assert (
        _angles_deg(corners, pts[:, None, :]).max()
        < np.degrees(np.arctan(2.0)) / 2**refinement * 1.2 + 1e-9
    )
    ef = np.asarray(g.edge_features, np.float64)
    d = (corners - pts[:, None, :]).reshape(-1, 3)
    scale = np.linalg.norm(d, axis=-1).max()
    back = np.einsum("nji,nj->ni", local_frames(np.repeat(pts, 3, axis=0)), ef[:, 1:] * scale)
    np.testing.assert_allclose(back, d, atol=1e-6)


def test_containing_faces_weights_and_degenerate_points():
    refinement = 3
    meshes = LEVELS[: refinement + 1]
    fine = meshes[-1]
    rng = np.random.default_rng(1)
    rand = rng.normal(size=(3000, 3))
    rand /= np.linalg.norm(rand, axis=-1, keepdims=True)
    on_vertices = fine.vertices
    on_edges = split_triangles(fine).vertices[len(fine.vertices) :]  # midpoints of every edge
    special = unit_vectors(
        np.deg2rad([90.0, -90.0, 0.0, 0.0, 0.0]), np.deg2rad([0.0, 0.0, 0.0, 180.0, -180.0])
    )
    for pts in (rand, on_vertices, on_edges, special):
        face, w = containing_faces(pts, meshes)
        assert np.all(w >= 0) and np.allclose(w.sum(-1), 1.0, atol=1e-14)
        x = np.einsum("nk,nki->ni", w, fine.vertices[fine.faces[face]])
        np.testing.assert_allclose(x / np.linalg.norm(x, axis=-1, keepdims=True), pts, atol=1e-13)
    # a point on a vertex gets weight 1 there; on an edge midpoint 1/2 at the edge's ends
    _, w = containing_faces(on_vertices, meshes)
    np.testing.assert_allclose(np.sort(w, -1), np.tile([0.0, 0.0, 1.0], (len(w), 1)), atol=1e-12)
    _, w = containing_faces(on_edges, meshes)
    np.testing.assert_allclose(np.sort(w, -1), np.tile([0.0, 0.5, 0.5], (len(w), 1)), atol=1e-12)
    # random points: the same face as a brute-force search over all faces
    face, _ = containing_faces(rand, meshes)
    corners = fine.vertices[fine.faces]  # (F, 3, 3)
    coords = np.einsum("fij,nj->nfi", np.linalg.inv(np.swapaxes(corners, 1, 2)), rand)
    assert np.array_equal(face, np.argmax(coords.min(-1), axis=-1))


def test_grid_mesh_graphs_bundle_is_a_pytree():
    lat, lon = _grid(64, 32)
    graphs = grid_mesh_graphs(lat, lon, 2)
    assert isinstance(graphs, GridMeshGraphs)
    assert len(jax.tree_util.tree_leaves(graphs)) == 12
    assert (
        graphs.mesh.n_nodes == 162 and graphs.grid2mesh.n_nodes == graphs.mesh2grid.n_nodes == 2048
    )
    assert int(graphs.grid2mesh.receivers.max()) < graphs.mesh.n_nodes
    assert int(graphs.mesh2grid.senders.max()) < graphs.mesh.n_nodes


def test_invalid_inputs():
    with pytest.raises(ValueError, match="refinement"):
        mesh_hierarchy(-1)
    with pytest.raises(ValueError, match="latitudes"):
        grid_points([100.0], [0.0])
