"""The augmented views of the 2023 augmentation loss: which audio transforms --audio_view asks
for, the pre-made view files of --data_path_audio_view, and the views of each training batch."""
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dataio.audio import normalize, read_audio
from dataio.augment import AudioViewSettings, make_view, view_rng
from training.settings import AUDIO_VIEWS

if TYPE_CHECKING:
    from training.inputs import Corpus


def audio_view_settings(spec: str) -> AudioViewSettings | None:
    """--audio_view: a comma list of speed (0.9-1.1x), tempo (0.9-1.1x, pitch kept), noise (white,
    10-30 dB SNR) and mask (SpecAugment-style: 2 time masks of 5 % in all, 2 frequency masks of
    10 %), or none."""
    parts = {part.strip() for part in spec.split(",") if part.strip()} - {"none"}
    unknown = parts - set(AUDIO_VIEWS)
    if unknown:
        raise ValueError(f"--audio_view {spec}: unknown {', '.join(sorted(unknown))}; choose among "
                         f"{', '.join(AUDIO_VIEWS)} or none")
    if not parts:
        return None
    return AudioViewSettings(speed_range=(0.9, 1.1) if "speed" in parts else None,
                             tempo_range=(0.9, 1.1) if "tempo" in parts else None,
                             snr_db_range=(10.0, 30.0) if "noise" in parts else None,
                             time_masks=2 if "mask" in parts else 0, freq_masks=2 if "mask" in parts else 0)


@dataclass
class Views:
    """Augmented views of the training utterances (the 2023 augmentation loss), made in the
    main process for each training batch, so no other utterance ever gets one. Audio: one of
    the utterance's files in a folder of pre-made views (upstream's --data_path_audio_augmented:
    files whose names end with `<FileName>.wav`, one picked per epoch), or the utterance
    transformed by dataio.augment; text: the features of an augmented transcript (IEMOCAP's
    back-translated AugmentedText). Every choice comes from a generator per utterance and epoch
    (the same views whatever the workers, batch order or a resume); what is not augmented is
    the utterance's own. The views form their own batch, run in their own pass (upstream's)."""
    corpus: "Corpus"
    audio: AudioViewSettings | None
    seed: int
    spec: object                       # the encoder's AudioInputSpec
    max_samples: int | None = None
    audio_files: dict | None = None    # utterance index -> its pre-made view files (view_files)

    def batch_of(self, batch, epoch: int):
        """The views of a training batch's utterances, collated in the same order."""
        indices = self.corpus.index_of(batch.names)
        return self.corpus.collate([self.view(i, self.corpus.dataset[i], epoch) for i in indices])

    def view(self, index: int, item: dict, epoch: int) -> dict:
        view = dict(item, name=f"{item['name']}#view")
        rng = view_rng(self.seed, epoch, index)
        wave = None
        if self.audio_files is not None:
            files = self.audio_files[index]
            wave = read_audio(files[int(rng.integers(len(files)))], self.spec.sampling_rate)
        elif self.audio is not None:
            own = item["wave"] if item["wave"] is not None else self.corpus.dataset.waves[index]  # conv cache on
            wave = make_view(own, rng, self.audio)
        if wave is not None:  # cut, then normalised over what is kept: upstream's order, as the utterances'
            wave = wave[: self.max_samples]
            view["wave"], view["conv_features"] = normalize(wave) if self.spec.do_normalize else wave, None
        if self.corpus.view_text is not None:
            view["text"] = self.corpus.view_text[index]
        return view


def view_files(names, folder) -> dict[int, list]:
    """Pre-made views: for each utterance, the files in `folder` whose names end with
    `<FileName>.wav` (upstream's naming: `<anything><FileName>.wav`), sorted. Utterances
    without one are named (InputProblems) by the caller."""
    wanted = {f"{name}.wav": i for i, name in enumerate(names)}
    found: dict[int, list] = {}
    for path in sorted(Path(folder).iterdir()):
        for start in range(len(path.name)):
            i = wanted.get(path.name[start:])
            if i is not None:
                found.setdefault(i, []).append(path)
                break
    return found

