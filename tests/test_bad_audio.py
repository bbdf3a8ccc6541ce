"""Audio whose header lies is refused by name before anything is decoded: a wav cut short (its
data chunk promises more than the file holds), a header declaring an absurd rate or length; and a
container whose video outlasts its audio is judged by the audio stream's own length, not refused."""
import io
import struct

import numpy as np
import pytest
import soundfile as sf

import dataio.audio
from dataio.audio import AudioError, audio_info, read_audio
from dataio.emobox import Source, place_audio
from dataio.iemocap import write_audio
from dataio.validate import audio_problems
from tests.containers import speech_like, write_video_outlasting_audio

RATE = 16000


def one_second_wav(path):
    """16 kHz mono PCM16: a 44-byte header and 32,000 bytes of samples (a 32 KB file)."""
    sf.write(str(path), speech_like(1.0, RATE), RATE, subtype="PCM_16")
    return bytearray(path.read_bytes())


def cut_short(path):
    whole = one_second_wav(path)
    path.write_bytes(whole[:44 + 32000 * 6 // 10])          # 0.6 s of the 1 s its header says


def promises_16000_seconds(path):
    whole = one_second_wav(path)
    struct.pack_into("<I", whole, 40, 16000 * 32000)         # the data chunk's size: 16,000 s of PCM16
    struct.pack_into("<I", whole, 4, 36 + 16000 * 32000)
    path.write_bytes(whole)


def rate_of_one_hertz(path):
    whole = one_second_wav(path)
    struct.pack_into("<II", whole, 24, 1, 2)                 # rate 1 Hz, 2 bytes/s: 16,000 samples = 16,000 s
    path.write_bytes(whole)


def flac_promising_16000_seconds(path):
    """A 1 s FLAC whose STREAMINFO (bytes 18..25: rate, channels, bits, 36-bit sample count) says
    16,000 s."""
    sf.write(str(path), speech_like(1.0, RATE), RATE, format="FLAC")
    whole = bytearray(path.read_bytes())
    packed = struct.unpack_from(">Q", whole, 18)[0]
    struct.pack_into(">Q", whole, 18, packed & ~(2**36 - 1) | 16000 * RATE)
    path.write_bytes(whole)


LIARS = {"cut_short.wav": (cut_short, "truncated or corrupt audio: 0.60 s of the 1.00 s its header says"),
         "long.wav": (promises_16000_seconds, "truncated or corrupt audio: 1.00 s of the 16000.00 s its header says"),
         "slow.wav": (rate_of_one_hertz, "its header declares a sample rate of 1 Hz"),
         "long.flac": (flac_promising_16000_seconds, "its header declares 16,000 s of audio in ")}


@pytest.fixture
def liars(tmp_path):
    for name, (make, _) in LIARS.items():
        make(tmp_path / name)
    return tmp_path


@pytest.mark.parametrize("name", list(LIARS))
def test_a_header_that_lies_is_refused_naming_the_file_before_any_decoding(liars, name, monkeypatch):
    def decoding(*args, **kwargs):
        raise AssertionError("decoding started")

    monkeypatch.setattr(sf.SoundFile, "read", decoding)
    monkeypatch.setattr(dataio.audio, "_decode", decoding)
    path = liars / name
    for read in (audio_info, read_audio, lambda p: read_audio(p, start=0.1, end=0.5)):
        with pytest.raises(AudioError) as err:
            read(path)
        message = str(err.value)
        assert message.startswith(f"{path}: {LIARS[name][1]}") and "; copy the file again" in message, message


def test_the_run_check_lists_every_lying_file_by_name(liars):
    problems = audio_problems([liars / name for name in LIARS])
    listed = [item for items in problems.values() for item in items]
    assert len(listed) == len(LIARS)
    for name, (_, words) in LIARS.items():
        assert any(item.startswith(f"{liars / name}: ") and words in item for item in listed), listed


@pytest.mark.parametrize("fmt, codec, suffix", [("avi", "pcm_s16le", ".avi"), ("matroska", "flac", ".mkv")])
def test_a_video_that_outlasts_its_audio_leaves_the_audio_whole(tmp_path, fmt, codec, suffix, monkeypatch):
    """5 fps video ending 0.2 s after a 1 s lossless audio track: all 16,000 samples, as written.
    The mkv's length is its audio track's DURATION tag (no packet is read); the avi's header has
    none, so its audio packets are read, not decoded."""
    if suffix == ".mkv":
        monkeypatch.setattr(dataio.audio, "_packets_end", lambda *args: pytest.fail("packets read"))
    source = speech_like(1.0, RATE)
    path = write_video_outlasting_audio(tmp_path / f"clip{suffix}", source, RATE, fmt, codec, after=0.2, fps=5)
    assert audio_info(path).frames == RATE
    got = read_audio(path)
    assert len(got) == RATE
    np.testing.assert_allclose(got, source, atol=1 / 2**15)
    assert audio_problems([path]) == {}


def test_an_avi_cut_short_is_still_refused(tmp_path):
    """With no length of its own in the header, the audio's packets are read (not decoded): all the
    file's streams ending well before its header's length is a cut."""
    path = write_video_outlasting_audio(tmp_path / "clip.avi", speech_like(2.0, RATE), RATE, "avi", "pcm_s16le")
    whole = path.read_bytes()
    path.write_bytes(whole[:len(whole) * 6 // 10])
    with pytest.raises(AudioError, match=f"^{path}: truncated or corrupt audio"):
        read_audio(path)


def test_an_avi_whose_video_outlasts_its_audio_no_longer_blocks_a_corpus_import(tmp_path):
    """The importers' writing step (dataio.iemocap.write_audio with EmoBox's place_audio) converts
    it beside a plain wav, and both land in the audio folder."""
    source = speech_like(1.0, RATE)
    avi = write_video_outlasting_audio(tmp_path / "clip.avi", source, RATE, "avi", "pcm_s16le", after=0.2, fps=5)
    wav = tmp_path / "plain.wav"
    sf.write(str(wav), source, RATE, subtype="FLOAT")
    sources = [Source(name, path, None, None, 1.0, True) for name, path in (("clip", avi), ("plain", wav))]
    write_audio(sources, tmp_path / "audio", link=False, reuse=False, place=place_audio)
    for name in ("clip", "plain"):
        samples, rate = sf.read(str(tmp_path / "audio" / f"{name}.wav"), dtype="float32")
        assert rate == RATE and len(samples) == RATE
        np.testing.assert_allclose(samples, source, atol=2 / 2**15)


def test_an_upload_is_checked_and_read_like_the_file_it_came_from(liars, tmp_path):
    """A file object (the service's upload) is refused by the same check, and a sound one reads
    the same samples as its file."""
    with pytest.raises(AudioError, match="truncated or corrupt audio: 0.60 s of the 1.00 s"):
        read_audio(io.BytesIO((liars / "cut_short.wav").read_bytes()))
    sound = tmp_path / "sound.wav"
    one_second_wav(sound)
    np.testing.assert_array_equal(read_audio(io.BytesIO(sound.read_bytes())), read_audio(sound))
