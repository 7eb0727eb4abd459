"""Sample names, benchmark split rules and ignore lists (method.md §1.2)."""
import pytest

from skelfast.data.ntu import (TRAIN_SUBJECTS_60, TRAIN_SUBJECTS_120, check_dataset_benchmark, in_dataset,
                               is_training, label_of, load_ignore_list, parse_sample_name)


def test_parse_sample_name():
    s = parse_sample_name("S017C003P020R002A060.skeleton")
    assert (s.setup, s.camera, s.performer, s.replication, s.action) == (17, 3, 20, 2, 60)
    assert label_of(s) == 59                                    # label = action - 1
    with pytest.raises(ValueError, match="readme.txt"):
        parse_sample_name("readme.txt")


def test_subject_lists():
    assert len(TRAIN_SUBJECTS_60) == 20 and len(TRAIN_SUBJECTS_120) == 53
    assert TRAIN_SUBJECTS_60 <= TRAIN_SUBJECTS_120
    assert {45, 103} <= TRAIN_SUBJECTS_120 and 3 not in TRAIN_SUBJECTS_120


@pytest.mark.parametrize("dataset, bench, name, train", [
    ("ntu60", "xsub", "S001C001P001R001A001", True),
    ("ntu60", "xsub", "S001C001P003R001A001", False),
    ("ntu60", "xsub", "S001C001P038R001A001", True),
    ("ntu60", "xsub", "S001C001P045R001A001", False),   # 45 trains only in NTU-120
    ("ntu120", "xsub", "S020C001P045R001A100", True),
    ("ntu120", "xsub", "S020C001P044R001A100", False),
    ("ntu60", "xview", "S001C001P001R001A001", False),  # camera 1 is the test view
    ("ntu60", "xview", "S001C002P001R001A001", True),
    ("ntu60", "xview", "S001C003P003R001A001", True),
    ("ntu120", "xset", "S002C001P003R001A001", True),   # even setups train
    ("ntu120", "xset", "S031C001P001R001A001", False),
    ("ntu120", "xsetup", "S032C001P001R001A001", True),  # the official code's name
])
def test_split_rules(dataset, bench, name, train):
    assert is_training(parse_sample_name(name), dataset, bench) is train


def test_unknown_or_undefined_benchmark_names_the_option():
    with pytest.raises(ValueError, match="--benchmark 'xfoo'"):
        check_dataset_benchmark("ntu60", "xfoo")
    with pytest.raises(ValueError, match="not defined for --dataset ntu60"):
        check_dataset_benchmark("ntu60", "xset")
    with pytest.raises(ValueError, match="--dataset 'kinetics'"):
        check_dataset_benchmark("kinetics", "xsub")
    assert check_dataset_benchmark("synthetic", "xview").name == "synthetic"


def test_dataset_membership():
    assert in_dataset(parse_sample_name("S017C001P001R001A060"), "ntu60")
    assert not in_dataset(parse_sample_name("S018C001P001R001A001"), "ntu60")   # NTU-120-only setup
    assert not in_dataset(parse_sample_name("S001C001P001R001A061"), "ntu60")
    assert in_dataset(parse_sample_name("S032C001P106R001A120"), "ntu120")
    assert in_dataset(parse_sample_name("S005C001P001R001A500"), "synthetic")


def test_ignore_lists_shipped_as_package_data():
    n60, n120 = load_ignore_list("ntu60"), load_ignore_list("ntu120")
    assert (len(n60), len(n120)) == (302, 535)                  # method.md §1.2
    assert "S001C002P005R002A008" in n60
    assert all(len(n) == 20 and not n.endswith(".skeleton") for n in n60 + n120)
    assert load_ignore_list("synthetic") == []
