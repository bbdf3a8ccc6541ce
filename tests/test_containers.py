"""dataio.audio reads every container kind (written here with PyAV's own encoders, tests/containers.py)
to the source's samples within a stated tolerance; segments by seeking equal the whole file's;
bad files are named with the fix."""
import av
import numpy as np
import pytest
import soxr

from tests.containers import KINDS, align, delay, snr_db, speech_like, write_container
from dataio.audio import AudioError, audio_info, audio_suffixes, read_audio

SECONDS = 2.0
LOSSLESS = {".mkv", ".mov"}              # flac, alac
# Codecs whose files carry no priming information: FFmpeg (and every player) decodes the encoder's
# delay as audio, so the samples arrive this much late (or, WMA, early); at most 75 ms here (ADTS AAC: its 1024-sample priming frame).
DELAYED = {".aac", ".avi", ".wma"}
MAX_DELAY = 1200                         # samples at 16 kHz (75 ms)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("containers")
    made = {}
    for suffix, (fmt, codec, rate, channels, video) in KINDS.items():
        source = speech_like(SECONDS, rate, seed=len(made))
        made[suffix] = (write_container(folder / f"clip{suffix}", source, rate, fmt, codec, channels, video),
                        soxr.resample(source, rate, 16000).astype(np.float32))
    return made


@pytest.mark.parametrize("suffix", list(KINDS))
def test_every_container_decodes_to_its_source(files, suffix):
    """Mono 16 kHz; lossless codecs to 40 dB SNR, lossy ones to 12 dB (WMA at
    128 kb/s measures about 16, AAC 20, Opus 30), aligned from the first sample
    (0 lag) except the DELAYED codecs; the length within 10 ms of the source's (DELAYED: 120 ms)."""
    path, reference = files[suffix]
    got = read_audio(path)
    assert got.dtype == np.float32 and got.ndim == 1
    assert abs(len(got) - len(reference)) <= (0.12 if suffix in DELAYED else 0.01) * 16000
    lag = delay(reference, got, MAX_DELAY)
    if suffix in DELAYED:
        assert abs(lag) <= MAX_DELAY
        got = align(got, lag)
    else:
        assert lag == 0
    assert snr_db(reference, got) > (40 if suffix in LOSSLESS else 12)
    info = audio_info(path)
    assert info.channels == KINDS[suffix][3] and info.samplerate == KINDS[suffix][2]
    assert info.duration == pytest.approx(SECONDS, abs=0.12 if suffix in DELAYED else 0.06)
    assert suffix in audio_suffixes()


@pytest.mark.parametrize("suffix", list(KINDS))
def test_a_segment_equals_that_stretch_of_the_whole_file(files, suffix):
    """0.5 s to 1.25 s: frames int(0.5 * rate) to int(1.25 * rate), read by seeking where the
    container's timestamps place samples exactly, else counted from the start."""
    path, _ = files[suffix]
    whole, segment = read_audio(path), read_audio(path, start=0.5, end=1.25)
    assert len(segment) == 12000
    # the resampler's edges aside, the same samples (AAC's decoder restarts after a seek: 1e-3)
    np.testing.assert_allclose(segment[200:-200], whole[8200:19800], atol=1e-3)


def test_containers_that_are_not_usable_are_named_with_the_fix(files, tmp_path):
    with av.open(str(tmp_path / "video.mp4"), "w") as container:
        picture = container.add_stream("mpeg4", rate=25)
        picture.width, picture.height, picture.pix_fmt = 64, 48, "yuv420p"
        for i in range(5):
            frame = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24").reformat(format="yuv420p")
            frame.pts = i
            for packet in picture.encode(frame):
                container.mux(packet)
        for packet in picture.encode(None):
            container.mux(packet)
    mkv = files[".mkv"][0].read_bytes()
    (tmp_path / "half.mkv").write_bytes(mkv[:len(mkv) // 2])
    mp4 = files[".mp4"][0].read_bytes()
    (tmp_path / "half.mp4").write_bytes(mp4[:len(mp4) // 2])
    (tmp_path / "noise.m4a").write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    codec = bytearray(mkv)
    at = codec.find(b"A_FLAC")
    codec[at:at + 6] = b"A_QQQQ"
    (tmp_path / "codec.mkv").write_bytes(bytes(codec))
    expected = {"video.mp4": "no audio stream", "half.mkv": "truncated", "half.mp4": "unreadable",
                "noise.m4a": "unreadable", "codec.mkv": "cannot be decoded", "missing.webm": "not found"}
    for name, words in expected.items():
        with pytest.raises(AudioError) as err:
            read_audio(tmp_path / name)
        message = str(err.value)
        assert message.startswith(str(tmp_path / name)) and words in message and "; " in message, message
