"""Audio I/O: read any recording as 16 kHz mono float32, write wavs atomically, and normalise
like the encoder's feature extractor. One reader for every caller: libsndfile (soundfile) where
it reads the file (wav, flac, ogg, mp3, ...), FFmpeg through PyAV (its wheel bundles FFmpeg's
libraries) for the containers it does not (mp4, mkv, avi, mov, webm, m4a/aac, opus, wma): the
first audio stream, its channels averaged, resampled with soxr. A segment (start, end in seconds)
is read by seeking, not by decoding the whole file. A header no recording has (a wav data chunk
longer than the file, an absurd rate or length) is refused before anything is decoded."""
import contextlib
import logging
import struct
from collections import defaultdict
from pathlib import Path

from dataclasses import dataclass

import av
import numpy as np
import soundfile as sf
import soxr

from utils.files import atomic_path
from models.errors import MMERError

log = logging.getLogger(__name__)
TARGET_SR = 16000
_warned: set[str] = set()


# File name endings of the formats this soundfile build reads (mp3 where libsndfile has it);
# header-less and exotic formats are left out of folder searches.
_SUFFIXES = {"WAV": (".wav",), "FLAC": (".flac",), "OGG": (".ogg", ".oga", ".opus"), "MP3": (".mp3",),
             "AIFF": (".aif", ".aiff"), "AU": (".au",), "CAF": (".caf",), "W64": (".w64",), "RF64": (".rf64",)}


# ...and those FFmpeg (PyAV) reads: audio in video and streaming containers.
FFMPEG_SUFFIXES = (".mp4", ".m4a", ".aac", ".mkv", ".mka", ".avi", ".mov", ".webm", ".opus", ".wma", ".mp3")
TRUNCATION_TOLERANCE = 0.05  # a stream this much shorter than its header says is truncated
MIN_RATE, MAX_RATE = 1000, 768_000  # Hz: a header's rate outside these is damage, not a recording
MIN_BYTES_PER_SECOND = 8     # digital silence as FLAC takes 23 B/s at 8 kHz: a header claiming fewer lies
_UNKNOWN_SIZES = (0, 0xFFFFFFFF)    # a wav data size left by a streaming writer: the data runs to the end
# Containers where a seek's timestamp places a segment's samples exactly (tests/test_containers.py).
# Elsewhere a segment is counted from the first sample, decoding from the start: matroska/webm and
# asf stamp in milliseconds (off by up to 16 samples), avi's audio stamps are not sample positions.
SEEK_EXACT = ("mp4", "mov", "ogg", "aac", "mp3")


def audio_suffixes() -> tuple[str, ...]:
    formats = sf.available_formats()
    ours = tuple(suffix for name, suffixes in _SUFFIXES.items() if name in formats for suffix in suffixes)
    return ours + tuple(s for s in FFMPEG_SUFFIXES if s not in ours)


class AudioError(MMERError, ValueError):
    """An audio file that cannot be used; the message names the file and the fix. `reason` is
    the message's middle, what is wrong with the file, for callers that word the rest themselves."""

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        self.reason = reason or message


def _problem(path, reason: str, fix: str) -> AudioError:
    return AudioError(f"{path}: {reason}; {fix}", reason)


def _warn_once(kind: str, message: str) -> None:
    if kind not in _warned:
        _warned.add(kind)
        log.warning(message + " (said once; later files are converted silently)")


@dataclass(frozen=True)
class AudioInfo:
    """What a file's header says: its audio's sample rate, channels and length."""
    samplerate: int
    channels: int
    frames: int             # samples per channel
    reader: str             # "soundfile" or "ffmpeg"
    format: str = ""        # soundfile's format (WAV, FLAC, ...) or FFmpeg's container name
    subtype: str = ""       # soundfile's subtype (PCM_16, ...) or FFmpeg's codec name

    @property
    def duration(self) -> float:
        return self.frames / self.samplerate


def _soundfile_info(path) -> AudioInfo | None:
    try:
        info = sf.info(_opened(path))
    except (sf.LibsndfileError, RuntimeError):
        return None
    return AudioInfo(info.samplerate, info.channels, info.frames, "soundfile", info.format, info.subtype)


def audio_info(path) -> AudioInfo:
    """The header of any file read_audio reads, without decoding it (AudioError: the file and
    the fix), refused where no recording has such a header (check_header)."""
    path = _existing(path)
    info = _soundfile_info(path)
    if info is None:
        with _open_container(path) as container:
            stream = _audio_stream(container, path)
            info = AudioInfo(stream.sample_rate, stream.channels, _header_frames(container, stream, path), "ffmpeg",
                             container.format.name, stream.codec_context.name)
    check_header(path, info)
    return info


def check_header(path, info: AudioInfo) -> None:
    """AudioError for a header no recording has: a sample rate outside MIN_RATE..MAX_RATE, more
    seconds than the file's bytes can hold (MIN_BYTES_PER_SECOND), a wav whose data chunk is over
    TRUNCATION_TOLERANCE longer than the bytes after it (libsndfile counts only those)."""
    if not MIN_RATE <= info.samplerate <= MAX_RATE:
        raise _problem(path, f"its header declares a sample rate of {info.samplerate} Hz, which no recording has "
                             "(a corrupt header)", "copy the file again from the corpus, or re-export it")
    with _binary(path) as handle:
        size = handle.seek(0, 2)
        chunk = _wav_data_chunk(handle, size)
    if info.frames and size < info.duration * MIN_BYTES_PER_SECOND:
        raise _problem(path, f"its header declares {info.duration:,.0f} s of audio in {size:,} bytes (a corrupt "
                             "header)", "copy the file again from the corpus, or re-export it")
    if chunk is not None:
        declared, present, byte_rate = chunk
        if present < declared * (1 - TRUNCATION_TOLERANCE):
            raise _truncated(path, present / byte_rate, declared / byte_rate)


@contextlib.contextmanager
def _binary(path):
    """The file open for reading bytes: a path opened (and closed), a file object rewound."""
    if hasattr(path, "read"):
        yield _opened(path)
        path.seek(0)
    else:
        with open(path, "rb") as handle:
            yield handle


def _wav_data_chunk(handle, size: int) -> tuple[int, int, int] | None:
    """(bytes of samples the data chunk declares, bytes after its header, the fmt chunk's byte
    rate) of a RIFF/WAVE file, walking its chunks; None for other formats, a data size a streaming
    writer left unknown, or a fmt chunk without a byte rate."""
    handle.seek(0)
    head = handle.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:] != b"WAVE":
        return None
    byte_rate = 0
    while len(header := handle.read(8)) == 8:
        name, length = header[:4], struct.unpack("<I", header[4:])[0]
        if name == b"data":
            known = length not in _UNKNOWN_SIZES and byte_rate
            return (length, size - handle.tell(), byte_rate) if known else None
        body = handle.read(min(length, 16)) if name == b"fmt " else b""
        if len(body) >= 12:
            byte_rate = struct.unpack_from("<I", body, 8)[0]
        handle.seek(length + (length & 1) - len(body), 1)
    return None


def read_audio(path, target_sr: int = TARGET_SR, start: float | None = None, end: float | None = None) -> np.ndarray:
    """The file's samples as float32 mono at target_sr (see prepare_samples): all of them, or the
    segment from `start` to `end` seconds, frames int(start * rate) to int(end * rate) as EmoBox's
    EmoDataset cuts them (read by seeking). AudioError names the file and the fix: missing,
    unreadable, corrupt or truncated, a header no recording has, no audio stream, a codec this
    FFmpeg cannot decode."""
    if start is None and end is None:
        samples, rate = read_frames(path)     # one open: the rate comes with the samples
    else:
        info = audio_info(path)
        first = 0 if start is None else int(start * info.samplerate)
        last = None if end is None else int(end * info.samplerate)
        samples, rate = read_frames(path, first, last, info)
    if samples.size == 0:
        raise _problem(path, f"the audio file holds no samples{' in that segment' if start or end else ''}",
                       "re-export it or drop the utterance")
    return prepare_samples(samples, rate, target_sr, str(path))


def read_frames(path, first: int = 0, last: int | None = None, info: AudioInfo | None = None
                ) -> tuple[np.ndarray, int]:
    """Frames first to last (default: the end) of the file at its own rate: ([n, channels] float32,
    rate). A whole file that decodes over TRUNCATION_TOLERANCE short of its header is refused.
    `info` (audio_info's) says which reader; without it, libsndfile is tried first, and the
    header it opens is checked (check_header) before a sample is read."""
    path = _existing(path)
    if info is None and hasattr(path, "read"):
        info = audio_info(path)      # an upload: checked before libsndfile shares the file object
    if info is not None and info.reader == "ffmpeg":
        return _ffmpeg_read(path, first, last, info.frames)
    try:
        with sf.SoundFile(_opened(path)) as handle:
            if info is None:
                check_header(path, AudioInfo(handle.samplerate, handle.channels, handle.frames, "soundfile"))
            if first:
                handle.seek(first)
            samples = handle.read(-1 if last is None else max(0, last - first), dtype="float32", always_2d=True)
            rate, frames = handle.samplerate, handle.frames
    except (sf.LibsndfileError, RuntimeError) as err:
        if info is None:             # not a file libsndfile reads: FFmpeg's
            return _ffmpeg_read(path, first, last, audio_info(path).frames)
        raise _problem(path, f"unreadable audio ({err})", "re-export it as a 16 kHz PCM wav") from err
    if first == 0 and last is None and len(samples) < frames * (1 - TRUNCATION_TOLERANCE):
        raise _truncated(path, len(samples) / rate, frames / rate)
    return samples, rate


def _existing(path):
    """A path that exists, or a binary file object (an upload)."""
    if hasattr(path, "read"):
        return path
    path = Path(path)
    if not path.is_file():
        raise _problem(path, "audio file not found", "check the audio folder or the csv's FileName")
    return path


def _truncated(path, got: float, header: float) -> AudioError:
    return _problem(path, f"truncated or corrupt audio: {got:.2f} s of the {header:.2f} s its header says",
                    "copy the file again from the corpus, or re-export it")


def _opened(path):
    """What soundfile and PyAV open: the path's string, or the file object rewound to its start."""
    if hasattr(path, "read"):
        path.seek(0)
        return path
    return str(path)


def _open_container(path):
    try:
        return av.open(_opened(path), mode="r", metadata_errors="ignore")
    except av.FFmpegError as err:
        raise _problem(path, "unreadable audio: neither libsndfile nor FFmpeg reads it "
                             f"({getattr(err, 'strerror', None) or err}: truncated, corrupt or not audio)",
                       "copy it again from the corpus, or re-export it as a 16 kHz PCM wav") from err


def _audio_stream(container, path: Path):
    if not container.streams.audio:
        kinds = ", ".join(sorted({s.type for s in container.streams})) or "no streams"
        raise _problem(path, f"the file has no audio stream ({kinds})", "extract the audio track, or drop the utterance")
    stream = container.streams.audio[0]
    if stream.codec_context is None:
        raise _problem(path, f"its audio codec cannot be decoded by this FFmpeg build (PyAV {av.__version__})",
                       "convert the file (e.g. to flac or a PCM wav)")
    return stream


def _header_frames(container, stream, path) -> int:
    """Samples per channel of the audio stream by its own length: its duration, its DURATION tag
    (matroska), the container's where it holds audio alone; else up to its last packet (a
    video may outlast the audio, as the container's duration does)."""
    seconds = _stream_seconds(stream)
    if seconds is None and len(container.streams.audio) == len(container.streams) and container.duration:
        seconds = container.duration / av.time_base
    if seconds is None:
        seconds = _packets_end(container, stream, path)
    return int(round(seconds * stream.sample_rate))


def _stream_seconds(stream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    try:
        hours, minutes, seconds = stream.metadata["DURATION"].split(":")
        return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    except (KeyError, ValueError):
        return None


def _packets_end(container, stream, path) -> float:
    """Seconds to the end of the stream's last packet, demuxed, not decoded. A file whose streams
    all end over TRUNCATION_TOLERANCE before the container's duration is cut short: refused."""
    ends = defaultdict(float)
    try:
        for packet in container.demux():
            if packet.pts is not None and packet.time_base is not None:
                end = float((packet.pts + (packet.duration or 0)) * packet.time_base)
                ends[packet.stream.index] = max(ends[packet.stream.index], end)
    except av.FFmpegError as err:
        raise _problem(path, f"corrupt audio ({getattr(err, 'strerror', None) or err})",
                       "copy the file again from the corpus, or re-export it") from err
    whole = (container.duration or 0) / av.time_base
    if max(ends.values(), default=0.0) < whole * (1 - TRUNCATION_TOLERANCE):
        raise _truncated(path, ends[stream.index], whole)
    return ends[stream.index]


def _ffmpeg_read(path: Path, first: int, last: int | None, header: int) -> tuple[np.ndarray, int]:
    """Decode the first audio stream into [samples, channels] float32: frames first to last, from
    the keyframe before `first`. The first decoded frame's timestamp places the samples, the rest
    follow it (a seek that lands past `first` falls back to decoding from the beginning, as do
    containers outside SEEK_EXACT). mp4/mov audio ends where its header says (the encoder pads its
    last frame); a whole stream that ends over TRUNCATION_TOLERANCE before `header` (audio_info's
    frames) is refused."""
    with _open_container(path) as container:
        stream = _audio_stream(container, path)
        rate = stream.sample_rate
        whole, formats = first == 0 and last is None, container.format.name.split(",")
        if last is None and "mp4" in formats:
            last = header or None
        try:
            seekable = any(name in formats for name in SEEK_EXACT)
            begin, samples = _decode(container, stream, first, last, seek=first > 0 and seekable)
            if begin > first:
                begin, samples = _decode(container, stream, first, last, seek=False)
        except av.FFmpegError as err:
            raise _problem(path, f"corrupt audio ({getattr(err, 'strerror', None) or err})",
                           "copy the file again from the corpus, or re-export it") from err
    if samples is None:
        raise _problem(path, "the audio stream decodes to no samples", "re-export it or drop the utterance")
    if whole and header and begin + samples.shape[0] < header * (1 - TRUNCATION_TOLERANCE):
        raise _truncated(path, samples.shape[0] / rate, header / rate)
    return np.ascontiguousarray(samples[first - begin:None if last is None else last - begin]), rate


def _decode(container, stream, first: int, last: int | None, seek: bool) -> tuple[int, np.ndarray | None]:
    """(sample position of the first decoded sample, [samples, channels]) up to `last`."""
    rate = stream.sample_rate
    container.seek(int(first / rate / stream.time_base) if seek else 0, stream=stream, backward=True)
    to_float = av.AudioResampler(format="fltp")
    chunks, begin, position = [], None, 0
    for frame in container.decode(stream):
        if begin is None:
            stamp = int(round(float(frame.pts * stream.time_base) * rate)) if frame.pts is not None else 0
            begin = position = stamp if seek else min(stamp, 0)   # from the start: a priming offset only
        for converted in to_float.resample(frame):
            chunk = converted.to_ndarray()
            chunks.append(chunk)
            position += chunk.shape[1]
        if last is not None and position >= last:
            break
    if not chunks:
        return 0, None
    return begin, np.concatenate(chunks, axis=1).T.astype(np.float32, copy=False)


def prepare_samples(samples: np.ndarray, sr: int, target_sr: int = TARGET_SR, name: str = "audio") -> np.ndarray:
    """[samples] or [samples, channels] at `sr` -> float32 mono at target_sr. Stereo is averaged
    to mono and other sample rates are resampled, each with one warning per process."""
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim == 1:
        samples = samples[:, None]
    if samples.ndim != 2 or samples.size == 0:
        raise AudioError(f"{name}: expected [samples] or [samples, channels] audio, got shape {samples.shape}")
    if not np.isfinite(samples).all():
        raise AudioError(f"{name}: the audio holds NaN or infinite samples")
    if samples.shape[1] > 1:
        _warn_once("downmix", f"{name}: {samples.shape[1]} channels, averaging to mono")
        samples = samples.mean(axis=1, keepdims=True)
    samples = samples[:, 0]
    if sr != target_sr:
        _warn_once(f"resample{sr}", f"{name}: sample rate {sr} Hz, resampling to {target_sr} Hz")
        samples = soxr.resample(samples, sr, target_sr).astype(np.float32)
    return np.ascontiguousarray(samples, dtype=np.float32)


def write_wav(path, samples: np.ndarray, sr: int = TARGET_SR, subtype: str = "PCM_16") -> None:
    """Write a wav atomically: a temporary file in the same folder, then a rename."""
    with atomic_path(path, suffix=".wav") as tmp:
        sf.write(str(tmp), samples, sr, subtype=subtype, format="WAV")


NORMALIZE_EPS = 1e-7  # in the variance, as transformers' Wav2Vec2FeatureExtractor


def normalize(samples: np.ndarray, eps: float = NORMALIZE_EPS) -> np.ndarray:
    """Zero-mean unit-variance per utterance, as Wav2Vec2FeatureExtractor(do_normalize=True)."""
    samples = samples.astype(np.float32)
    return (samples - samples.mean()) / np.sqrt(samples.var() + eps)
