"""Hostile and odd inputs cost one case, never the batch; corrupt data is never segmented."""

import gzip
import os
import signal
import struct
import threading
import time

import numpy as np
import pytest
import SimpleITK as sitk

import inference.__main__ as cli
from benchmarks.fuzz import make_corpus, nifti2, run_batch, write
from inference.discovery import scan_inputs, shown
from inference.errors import InputError
from inference.headers import check_file
from inference.io import hu_array, read_ct
from inference.reader import Reader
from tests.helpers import write_dicom_series
from tests.inference.test_batch_safety import small_ct
from tests.inference.test_cli import run

# The counts benchmarks/fuzz.py reports that must stay at zero.
MUST_BE_ZERO = (
    "crashes",
    "hangs",
    "tracebacks",
    "corrupt segmented",
    "good lost",
    "valid refused",
    "inputs changed",
    "leftovers",
    "off grid",
    "no line",
    "stray lines",
)


def test_a_slice_of_the_fuzz_corpus_keeps_the_contract(small_weights, tmp_path):
    # Every class twice (16 inputs, two batches each with a good case), fresh processes.
    batches = make_corpus(tmp_path / "corpus", 16, seed=7, per_batch=8, every_class=True)
    for folder, entries in batches:
        counts = run_batch(folder, entries, tmp_path / "out" / folder.name, small_weights, 120)
        assert {k: counts[k] for k in MUST_BE_ZERO} == dict.fromkeys(MUST_BE_ZERO, 0), (
            counts["problems"] + counts["stray"]
        )


def test_names_are_printed_on_one_line():
    assert shown("a\nb.nii.gz") == "a\\nb.nii.gz"
    assert shown(os.fsdecode(b"scan_\xff.nii.gz")) == "scan_\\xff.nii.gz"
    assert shown("Überprüfung.nii.gz") == "Überprüfung.nii.gz"


def test_every_entry_passed_over_is_named_with_its_reason(tmp_path):
    write(small_ct(), tmp_path / "good.nii.gz")
    (tmp_path / "dangling.nii.gz").symlink_to(tmp_path / "nowhere")
    os.mkfifo(tmp_path / "pipe.nii.gz")
    (tmp_path / ".hidden.nii.gz").write_bytes(b"")
    (tmp_path / "folder.nii.gz").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    deep = tmp_path.joinpath(*"abcde")
    deep.mkdir(parents=True)
    scan = scan_inputs(tmp_path)
    assert scan.cases == [tmp_path / "good.nii.gz"]
    reasons = {p.name: why for p, why in scan.skipped}
    assert "leads nowhere" in reasons["dangling.nii.gz"]
    assert "FIFO" in reasons["pipe.nii.gz"]
    assert "hidden" in reasons[".hidden.nii.gz"]
    assert "named like an image file" in reasons["folder.nii.gz"]
    assert "nor DICOM" in reasons["notes.txt"]
    assert "levels down only" in reasons["e"]


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("NDims", "-1", "not a dimension count"),
        ("NDims", "100", "not a dimension count"),
        ("TransformMatrix", "2 0 0 0 2 0 0 0 2", "not a rotation"),
        ("TransformMatrix", "nan 0 0 0 1 0 0 0 1", "NaN"),
        ("DimSize", "61 51 -5", "under 1 voxel"),
    ],
)
def test_a_metaio_header_the_reader_would_choke_on_is_refused_in_python(
    tmp_path, key, value, reason
):
    path = tmp_path / "scan.mha"
    write(small_ct(), path)
    data = path.read_bytes()
    lines = [ln for ln in data.split(b"\n") if not ln.startswith(key.encode() + b" ")]
    path.write_bytes(b"\n".join([lines[0], f"{key} = {value}".encode(), *lines[1:]]))
    with pytest.raises(InputError, match=reason):
        check_file(path, tmp_path)


def test_nifti2_and_two_member_gzip_read_as_their_nifti1_twin(tmp_path):
    ct = small_ct()
    (tmp_path / "two.nii").write_bytes(nifti2(ct))
    plain = tmp_path / "plain.nii"
    write(ct, plain)
    data = plain.read_bytes()
    (tmp_path / "members.nii.gz").write_bytes(
        gzip.compress(data[:1000]) + gzip.compress(data[1000:])
    )
    expected = sitk.GetArrayFromImage(ct)
    for name in ("two.nii", "members.nii.gz"):
        image = read_ct(tmp_path / name)
        assert np.array_equal(sitk.GetArrayFromImage(image), expected)
        assert np.allclose(image.GetOrigin(), ct.GetOrigin(), atol=1e-3)
        assert np.allclose(image.GetDirection(), ct.GetDirection(), atol=1e-5)


def test_corrupt_data_is_refused_in_every_format(tmp_path):
    ct = small_ct()
    cases = {}
    for name, compress in (("a.nii.gz", True), ("b.mha", True), ("c.nrrd", True)):
        write(ct, tmp_path / name, compress)
        data = bytearray((tmp_path / name).read_bytes())
        data[len(data) // 2] ^= 0xFF  # one flipped byte in the compressed stream
        (tmp_path / name).write_bytes(bytes(data))
        cases[name] = "corrupt"
    write(ct, tmp_path / "d.nii")
    (tmp_path / "d.nii").write_bytes((tmp_path / "d.nii").read_bytes()[:-1000])
    cases["d.nii"] = "truncated"
    nan = sitk.GetArrayFromImage(ct).astype(np.float32)
    nan[5, 5, 5] = np.nan
    image = sitk.GetImageFromArray(nan)
    image.CopyInformation(ct)
    write(image, tmp_path / "e.nii")
    cases["e.nii"] = "NaN"
    swapped = tmp_path / "f.mha"
    write(ct, swapped)
    swapped.write_bytes(
        swapped.read_bytes().replace(b"ByteOrderMSB = False", b"ByteOrderMSB = True")
    )
    cases["f.mha"] = "byte order"
    for name, reason in cases.items():
        with pytest.raises(InputError, match=reason):
            hu_array(read_ct(tmp_path / name), tmp_path / name)  # what the reader process runs


def test_a_nifti_with_a_sheared_sform_is_refused(tmp_path):
    path = tmp_path / "sheared.nii"
    write(small_ct(), path)
    data = bytearray(path.read_bytes())
    data[254:256] = struct.pack("<h", 1)
    srow = list(struct.unpack("<12f", data[280:328]))
    srow[1] = srow[0] * 0.5
    data[280:328] = struct.pack("<12f", *srow)
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match="sform is not a rotation"):
        read_ct(path)


def test_a_reader_that_hangs_or_dies_costs_one_case(tmp_path):
    good = tmp_path / "good.nii.gz"
    write(small_ct(), good)
    fifo = tmp_path / "stuck.nii"
    os.mkfifo(fifo)  # opening it for reading blocks until a writer comes: a reader stuck
    with Reader(timeout=2) as reader:
        with pytest.raises(InputError, match="took over 2 s"):
            reader.read(fifo)
        assert reader.read(good).volume.shape == (56, 51, 61)  # a new reader process
        killer = threading.Timer(1, lambda: os.kill(reader._proc.pid, signal.SIGSEGV))
        killer.start()
        with pytest.raises(InputError, match="crashed on it \\(killed by SIGSEGV"):
            reader.read(fifo)
        assert reader.read(good).volume.shape == (56, 51, 61)


def test_a_stop_during_numpy_ends_the_run_within_seconds(small_weights, tmp_path, monkeypatch):
    inputs = tmp_path / "in"
    inputs.mkdir()
    write(small_ct(), inputs / "a_0000.nii.gz")
    release = threading.Event()

    def numpy_forever(self, volume, *args):  # a phase no signal can interrupt
        while not release.is_set():
            np.sort(np.random.default_rng(0).random(200_000))

    monkeypatch.setattr(cli.Segmenter, "segment", numpy_forever)
    sent = []

    def stop() -> None:
        sent.append(time.monotonic())
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Timer(6, stop).start()
    try:
        code = run(small_weights, inputs, tmp_path / "out")
        ended = time.monotonic()
    finally:
        release.set()
    assert code == 128 + signal.SIGTERM
    assert ended - sent[0] < 5
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_an_enhanced_multi_frame_dicom_file_is_a_case(small_weights, tmp_path):
    ct = small_ct()
    series = tmp_path / "in" / "series"
    series.mkdir(parents=True)
    writer = sitk.ImageFileWriter()
    writer.SetImageIO("GDCMImageIO")  # one file, its frames the slices
    writer.SetFileName(str(series / "volume.dcm"))
    frames = sitk.Cast(ct, sitk.sitkInt16)
    frames.SetMetaData("0008|0060", "CT")
    writer.Execute(frames)
    assert run(small_weights, tmp_path / "in", tmp_path / "out") == 0
    labels = sitk.ReadImage(str(tmp_path / "out" / "series.nii.gz"))
    assert labels.GetSize() == ct.GetSize()
    assert np.allclose(labels.GetOrigin(), ct.GetOrigin(), atol=1e-3)
    assert np.allclose(labels.GetSpacing(), ct.GetSpacing())


def test_names_that_are_not_utf8_are_read_and_named_alike(small_weights, tmp_path, capsys):
    # ITK's readers and writers abort the process on such a name: a batch used to die of it.
    inputs = tmp_path / "in"
    inputs.mkdir()
    plain = inputs / "plain.nii"
    write(small_ct(), plain)
    latin1 = os.fsdecode(b"caf\xe9_0000.nii")
    os.rename(plain, inputs / latin1)
    write_dicom_series(small_ct(), inputs / "series")  # written plain: ITK's writer aborts too
    os.rename(inputs / "series", inputs / os.fsdecode(b"s\xe9rie"))
    assert run(small_weights, inputs, tmp_path / "out") == 0
    made = sorted(os.fsencode(p.name) for p in (tmp_path / "out").iterdir())
    assert made == [b"caf\xe9.nii.gz", b"s\xe9rie.nii.gz"]
    assert "caf\\xe9.nii.gz" in capsys.readouterr().err  # printed escaped
