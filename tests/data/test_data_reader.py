"""Raw `.skeleton` reader: layout and body-slot semantics of method.md §1.1, bad-input errors."""
import os

import numpy as np
import pytest

from data_fixtures import body, skeleton_text
from skelfast.data.skeleton_reader import SkeletonFormatError, parse_skeleton_text, read_skeleton, read_skeletons

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "S002C003P004R001A012.skeleton")


def test_literal_fixture_values():
    # fixture: frame 0 one body, frame 1 no body, frame 2 three bodies (third dropped), §1.1
    x = read_skeleton(FIXTURE)
    assert x.shape == (3, 3, 25, 2) and x.dtype == np.float64
    np.testing.assert_allclose(x[:, 0, 0, 0], [0.1, 0.5, 3.2])
    np.testing.assert_allclose(x[:, 0, 24, 0], [0.1 + 0.24, 0.5 - 0.48, 3.2 + 0.024])
    assert not x[:, 0, :, 1].any()                  # one body: slot 1 stays zero
    assert not x[:, 1].any()                        # missing frame: zeros
    # frame 2: slots in file order, regardless of bodyID (the tracked ID ...101 is listed second)
    np.testing.assert_allclose(x[:, 2, 0, 0], [-0.5, 0.4, 3.0])
    np.testing.assert_allclose(x[:, 2, 0, 1], [0.11, 0.49, 3.21])
    assert not np.isclose(x[0], 1.5).any()          # the third body (x starts at 1.5) is dropped


def test_one_body(write_skeleton):
    b = [body(s) for s in range(4)]
    x = read_skeleton(write_skeleton("a.skeleton", [[bb] for bb in b]))
    assert x.shape == (3, 4, 25, 2)
    for t in range(4):
        np.testing.assert_array_equal(x[:, t, :, 0], b[t].T)
    assert not x[..., 1].any()


def test_two_bodies_file_order(write_skeleton):
    # slot m = m-th body of that frame in file order; no tracking by bodyID (§1.1)
    p, q = body(1), body(2)
    x = read_skeleton(write_skeleton("b.skeleton", [[p, q], [q, p]]))
    np.testing.assert_array_equal(x[:, 0, :, 0], p.T)
    np.testing.assert_array_equal(x[:, 0, :, 1], q.T)
    np.testing.assert_array_equal(x[:, 1, :, 0], q.T)   # swapped order in the file -> swapped slots
    np.testing.assert_array_equal(x[:, 1, :, 1], p.T)


def test_three_bodies_third_dropped(write_skeleton):
    a, b, c = body(3), body(4), body(5)
    x = read_skeleton(write_skeleton("c.skeleton", [[a, b, c]]))
    assert x.shape == (3, 1, 25, 2)
    np.testing.assert_array_equal(x[:, 0, :, 1], b.T)
    x3 = read_skeleton(write_skeleton("c3.skeleton", [[a, b, c]]), max_body=3)
    np.testing.assert_array_equal(x3[:, 0, :, 2], c.T)


def test_missing_frames_keep_zeros(write_skeleton):
    a, b = body(6), body(7)
    x = read_skeleton(write_skeleton("d.skeleton", [[], [a], [a, b], []]))
    assert x.shape[1] == 4                            # header count, including empty frames (§1.2)
    assert not x[:, 0].any() and not x[:, 3].any()
    assert not x[:, 1, :, 1].any()                    # fewer bodies: slot 1 zero
    np.testing.assert_array_equal(x[:, 2, :, 1], b.T)


def test_fewer_joints_than_25(write_skeleton):
    x = read_skeleton(write_skeleton("e.skeleton", [[body(8, num_joint=20)]], num_joint=20))
    assert x.shape == (3, 1, 25, 2)
    assert x[:, 0, :20, 0].any() and not x[:, 0, 20:, 0].any()


def test_parallel_equals_serial(write_skeleton):
    paths = [write_skeleton(f"f{i}.skeleton", [[body(i)], [body(i + 10), body(i + 20)]]) for i in range(5)]
    serial = read_skeletons(paths, workers=0)
    parallel = read_skeletons(paths, workers=2)
    for s, p in zip(serial, parallel):
        np.testing.assert_array_equal(s, p)


@pytest.mark.parametrize("mutate, message", [
    (lambda t: t[: len(t) // 2], "truncated"),                            # cut mid-file
    (lambda t: t.rsplit("\n", 3)[0] + "\n", "truncated"),                 # last joint lines missing
    (lambda t: t.replace("0.01 -0.02", "0.01 abc", 1), "malformed body info line"),   # bad token
    (lambda t: t.replace("\n25\n", "\n25\nabc ", 1), "malformed joint line.*line 5"),   # bad x of joint 0
    (lambda t: "\n".join(l if k != 4 else "0.5 0.25" for k, l in enumerate(t.split("\n"))),
     "malformed joint line.*line 5 has 2 values"),                       # a joint line without z
    (lambda t: "\n".join(l if k != 6 else "" for k, l in enumerate(t.split("\n"))),
     "malformed joint line.*line 7 has 0 values"),                       # a blank joint line
    (lambda t: "0\n", "0 frames"),
    (lambda t: t + "1\n", "trailing"),
    (lambda t: "2\n1.5\n" + t.split("\n", 2)[2], "non-negative integer"),
    (lambda t: "", "numFrame"),
])
def test_malformed_files_name_the_file(tmp_path, mutate, message):
    path = tmp_path / "S001C001P001R001A001.skeleton"
    path.write_text(mutate(skeleton_text([[body(1)], [body(2)]])))
    with pytest.raises(SkeletonFormatError, match=message) as err:
        read_skeleton(str(path))
    assert str(path) in str(err.value)


def test_binary_file_is_rejected(tmp_path):
    path = tmp_path / "bin.skeleton"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    with pytest.raises(SkeletonFormatError, match="bin.skeleton"):
        read_skeleton(str(path))


def test_parse_text_matches_file(write_skeleton):
    frames = [[body(9), body(10)]]
    text = skeleton_text(frames)
    np.testing.assert_array_equal(parse_skeleton_text(text), read_skeleton(write_skeleton("g.skeleton", frames)))


def test_crlf_line_endings(tmp_path, write_skeleton):
    frames = [[body(11)], [body(12), body(13)]]
    lf = write_skeleton("lf.skeleton", frames)
    crlf = tmp_path / "crlf.skeleton"
    crlf.write_bytes(skeleton_text(frames).replace("\n", "\r\n").encode())
    np.testing.assert_array_equal(read_skeleton(str(crlf)), read_skeleton(lf))


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "1e999"])
@pytest.mark.parametrize("frame, body_index, joint, column", [(0, 0, 0, 0), (1, 1, 24, 2)])
def test_non_finite_joint_value_names_file_line_and_frame(tmp_path, value, frame, body_index, joint, column):
    # np.loadtxt parses nan/inf (and overflows 1e999 to inf); the reader must not pass them on
    path = tmp_path / "S001C001P001R001A001.skeleton"
    lines = skeleton_text([[body(1), body(2)], [body(3), body(4)]]).split("\n")
    k = 1 + frame * (1 + 2 * 27) + 1 + body_index * 27 + 2 + joint   # 0-based line of that joint
    words = lines[k].split()
    words[column] = value
    lines[k] = " ".join(words)
    path.write_text("\n".join(lines))
    with pytest.raises(SkeletonFormatError, match=f"line {k + 1}, frame {frame} body {body_index} joint {joint}: "
                                                  "non-finite") as err:
        read_skeleton(str(path))
    assert str(path) in str(err.value)


def test_non_finite_in_ignored_columns_or_dropped_body_is_harmless(tmp_path):
    # only x, y, z of kept bodies are used (§1.1); a nan elsewhere does not reach the data
    text = skeleton_text([[body(1), body(2), body(3)]])
    lines = text.split("\n")
    lines[4] = " ".join(lines[4].split()[:3] + ["nan"] * 9)        # depth/colour/orientation columns
    k = 2 + 2 * 27 + 2                                              # third body (dropped), joint 0
    lines[k] = "nan nan nan " + " ".join(lines[k].split()[3:])
    path = tmp_path / "ok.skeleton"
    path.write_text("\n".join(lines))
    x = read_skeleton(str(path))
    assert np.isfinite(x).all()
    np.testing.assert_array_equal(x[:, 0, :, 0], body(1).T)
