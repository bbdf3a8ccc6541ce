"""Recordings in every container the audio reader supports, written with PyAV's own encoders
(no system ffmpeg): what tests/test_containers.py decodes and checks against the source."""
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

# suffix -> (container format, audio codec, sample rate, channels, with a video stream)
KINDS = {
    ".mp4": ("mp4", "aac", 44100, 2, True),          # MELD: video + AAC
    ".m4a": ("ipod", "aac", 44100, 1, False),        # MEAD
    ".aac": ("adts", "aac", 16000, 1, False),
    ".mkv": ("matroska", "flac", 48000, 2, False),
    ".mka": ("matroska", "libopus", 48000, 1, False),
    ".avi": ("avi", "mp3", 44100, 2, True),          # MER2023, eNTERFACE: video + mp3
    ".mov": ("mov", "alac", 22050, 1, False),
    ".webm": ("webm", "libopus", 48000, 2, True),    # EMNS: opus in webm
    ".opus": ("ogg", "libopus", 48000, 1, False),
    ".wma": ("asf", "wmav2", 44100, 2, False),
}


def speech_like(seconds: float, rate: int, seed: int = 0) -> np.ndarray:
    """A voiced sound with a wandering pitch and loudness: [samples] float32 in [-0.5, 0.5]."""
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(seed)
    pitch = 140 + 40 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6))
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
    return (0.15 * (1 + 0.6 * np.sin(2 * np.pi * 2.1 * t)) * voiced / 1.5).astype(np.float32)


def write_container(path, samples: np.ndarray, rate: int, fmt: str, codec: str, channels: int = 1,
                    video: bool = False) -> Path:
    """samples [n] written as `channels` identical channels (opposite small offsets per channel, so
    the average is the source) with `codec` in container `fmt`; optionally a black video stream."""
    path = Path(path)
    layout = "stereo" if channels == 2 else "mono"
    with av.open(str(path), "w", format=fmt) as container:
        options = {"strict": "experimental"} if codec in ("libopus", "opus") else {}
        stream = container.add_stream(codec, rate=rate, options=options)
        stream.layout = layout
        if codec == "wmav2":
            stream.bit_rate = 128_000
        picture = None
        if video:
            picture = container.add_stream("libvpx" if fmt == "webm" else "mpeg4", rate=25)
            picture.width, picture.height, picture.pix_fmt = 64, 48, "yuv420p"
        stream_format = stream.codec_context.format.name
        planes = np.stack([samples + 0.01, samples - 0.01][:channels]) if channels == 2 else samples[None]
        size = stream.codec_context.frame_size or 1024
        frames_per_picture = rate // 25
        pictures = 0
        for begin in range(0, planes.shape[1], size):
            chunk = np.ascontiguousarray(planes[:, begin:begin + size])
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
            frame.sample_rate, frame.pts, frame.time_base = rate, begin, Fraction(1, rate)
            if stream_format != "fltp":
                frame = av.AudioResampler(format=stream_format, layout=layout, rate=rate).resample(frame)[0]
                frame.pts, frame.time_base = begin, Fraction(1, rate)
            for packet in stream.encode(frame):
                container.mux(packet)
            while picture is not None and pictures * frames_per_picture <= begin:
                image = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")
                image.pts = pictures
                for packet in picture.encode(image.reformat(format="yuv420p")):
                    container.mux(packet)
                pictures += 1
        for packet in stream.encode(None):
            container.mux(packet)
        if picture is not None:
            for packet in picture.encode(None):
                container.mux(packet)
    return path


def write_video_outlasting_audio(path, samples: np.ndarray, rate: int, fmt: str, codec: str, after: float = 0.2,
                                 fps: int = 5) -> Path:
    """samples [n] as mono `codec` audio in container `fmt`, beside a black `fps` video that runs
    on `after` seconds past the audio's end (as a camera's recording outlasts its microphone's)."""
    path = Path(path)
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.layout = "mono"
        picture = container.add_stream("mpeg4", rate=fps)
        picture.width, picture.height, picture.pix_fmt = 64, 48, "yuv420p"
        size = stream.codec_context.frame_size or 1024
        to_codec = av.AudioResampler(format=stream.codec_context.format.name, layout="mono", rate=rate)
        for begin in range(0, len(samples), size):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[None, begin:begin + size]),
                                               format="fltp", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = rate, begin, Fraction(1, rate)
            for converted in to_codec.resample(frame):
                for packet in stream.encode(converted):
                    container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
        for index in range(int(round((len(samples) / rate + after) * fps))):
            image = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")
            image.pts = index
            for packet in picture.encode(image.reformat(format="yuv420p")):
                container.mux(packet)
        for packet in picture.encode(None):
            container.mux(packet)
    return path


def delay(reference: np.ndarray, got: np.ndarray, span: int) -> int:
    """The lag (samples) at which `got` best matches `reference`, by cross-correlation."""
    n = min(len(reference), len(got)) - 2 * span
    scores = [np.dot(reference[span:span + n], got[span + lag:span + lag + n]) for lag in range(-span, span + 1)]
    return int(np.argmax(scores)) - span


def snr_db(reference: np.ndarray, got: np.ndarray) -> float:
    n = min(len(reference), len(got))
    return float(10 * np.log10(np.sum(reference[:n] ** 2) / np.sum((reference[:n] - got[:n]) ** 2)))


def align(got: np.ndarray, lag: int) -> np.ndarray:
    """`got` moved back by `lag` samples (forward, zero-padded, for a negative lag)."""
    return got[lag:] if lag > 0 else np.pad(got, (-lag, 0))
