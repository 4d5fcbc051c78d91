"""`SpeechPipeline`: TTS, ASR-by-token, continuation and spoken dialogue behind one facade.

The demo and the evaluation suite code against exactly this class. A model dir (what ``slm train``
writes, see :func:`save_bundle`) holds::

    slm_config.json        backbone spec, codec location/class, sampling defaults
    token_layout.json      the extended vocabulary (slm.layout)
    adapter/               peft LoRA adapter (+ trained rows of the new tokens)
    acoustic_head.*        the depth transformer (absent when the codec has no acoustic stream)
    codec/                 the codec it was trained with (copy), or a path in slm_config.json
    voices/NAME.safetensors  reference tokens (+ transcript in the metadata) for named voices
"""
from __future__ import annotations

import bisect
import copy
import dataclasses
import importlib
import itertools
import json
import math
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from codec.config import TWO_STREAM
from codec.contracts import CodecTokens, check_audio
from codec.segment import PauseConfig, split_at_pauses
from slm import ASR_METHODS, READER_ASR_METHODS, check_seed
from slm.acoustic_head import AcousticHead, acoustic_from_frames, acoustic_ratio, frames_from_acoustic
from slm.ctc_reader import CTCPrefixScorer, CTCReader, JointConfig, char_ids, joint_transcribe, reader_codes
from slm.fused_asr import (
    FusionConfig,
    Hypothesis,
    Lexicon,
    TextScorer,
    ctc_align,
    fused_nbest,
    fused_transcribe,
)
from slm.generate import (
    FusedStep,
    Sampling,
    generate_best,
    generate_frames,
    generate_text,
    inference_copy,
    int8_mode,
    quantize_int8,
    transcribe_aligned,
)
from slm.layout import TokenLayout
from slm.templates import (
    IGNORE,
    asr_aligned_from_cuts,
    asr_prompt,
    audio_only_prompt,
    continuation_prompt,
    split_words,
    tts_prompt,
    word_ids,
)

BUNDLE_VERSION = 1
MAX_TEXT_CHARS = 5000  # beyond this, split the text yourself: a bound against accidental endless input
DEFAULT_DIR_ENV = "DUALSTREAM_SLM_DEFAULT"


@dataclass
class Voice:
    name: str
    tokens: CodecTokens  # batch of one
    text: str = ""  # transcript of the reference, enables prompting the LM with it


@dataclass
class DialogueTurn:
    user_text: str
    reply_text: str
    reply_audio: Tensor  # [1, N]
    latencies: dict[str, float] = field(default_factory=dict)  # seconds per stage


def split_sentences(text: str, max_chars: int = 200) -> list[str]:
    """Sentence chunks of at most ``max_chars`` (long sentences split at commas, then words)."""
    parts = [p.strip() for p in re.split(r"(?<=[.!?;:])\s+|\n+", text) if p.strip()]
    out: list[str] = []
    for p in parts:
        while len(p) > max_chars:
            cut = max(p.rfind(",", 0, max_chars), p.rfind(" ", 0, max_chars))
            cut = cut if cut > 0 else max_chars
            out.append(p[: cut + 1].strip())
            p = p[cut + 1 :].strip()
        if p:
            out.append(p)
    return out


def _load_codec(path: str | Path, cls_name: str | None):
    mod, _, name = (cls_name or "codec.model:DualStreamCodec").partition(":")
    return getattr(importlib.import_module(mod), name).from_pretrained(str(path))


def save_bundle(directory: str | Path, lm, layout: TokenLayout, head: AcousticHead | None, codec,
                backbone: str, codec_path: str | None = None, voices: list[Voice] | None = None,
                extra: dict | None = None, half: bool = False) -> Path:
    """Write a model dir. The codec is copied in (``save_pretrained``) unless ``codec_path`` is given.

    ``half``: store adapter, head (and codec) weights in fp16 (the bundled default must stay small);
    they are cast back to the model's dtype on load."""
    from adapters.lora import save_adapter

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    save_adapter(lm, d / "adapter")
    layout.save(d)
    if head is not None:
        head.save_pretrained(d)
    if codec_path is None and hasattr(codec, "save_pretrained"):
        codec.save_pretrained(str(d / "codec"), **({"dtype": torch.float16} if half else {}))
        codec_path = "codec"
    if half:
        from safetensors.torch import load_file

        from codec.runtime import save_safetensors

        for f in [d / "adapter" / "adapter_model.safetensors", d / "acoustic_head.safetensors"]:
            if f.exists():
                save_safetensors({k: (v.half() if v.is_floating_point() else v) for k, v in load_file(str(f)).items()},
                                 str(f), metadata={"format": "pt"})
    for v in voices or []:
        (d / "voices").mkdir(exist_ok=True)
        v.tokens.save(d / "voices" / f"{v.name}.safetensors", metadata={"text": v.text})
    cfg = {"version": BUNDLE_VERSION, "backbone": backbone, "codec": codec_path,
           "codec_class": f"{type(codec).__module__}:{type(codec).__name__}", **(extra or {})}
    (d / "slm_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return d


def model_dir(path: str | Path) -> Path:
    """``"default"`` -> :func:`default_model_dir`; anything else as a path."""
    return default_model_dir() if str(path) == "default" else Path(path)


def model_sampling(path: str | Path) -> Sampling:
    """A model dir's decoding defaults (``slm_config.json`` ``"sampling"`` over :class:`Sampling`'s), read
    without loading the model: what ``from_pretrained(path).sampling`` will be."""
    d = model_dir(path)
    return sampling_from_config(read_model_config(d).get("sampling"), str(d / "slm_config.json"))


def read_model_config(d: Path) -> dict:
    """A speech-LM model dir's ``slm_config.json``; a clear error when ``d`` is not such a dir."""
    import json

    f = Path(d) / "slm_config.json"
    if not f.is_file():
        raise FileNotFoundError(f"{d} is not a speech-LM model dir (slm_config.json missing)")
    try:
        cfg = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{f}: not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{f}: expected a JSON object of settings, got {type(cfg).__name__}")  # noqa: TRY004 (bad input)
    return cfg


def sampling_from_config(settings: dict | None, where: str = "slm_config.json") -> Sampling:
    """A model dir's ``sampling`` settings (slm_config.json) as :class:`Sampling`, with a clear error for an
    unknown name or a value of the wrong type (instead of a TypeError deep in the constructor or the sampler)."""
    from codec.config import check_keys, check_types

    settings = settings or {}
    if not isinstance(settings, dict):
        raise ValueError(f"{where}: expected a mapping of sampling settings, got {settings!r:.60}")  # noqa: TRY004 (bad input)
    try:
        check_keys(Sampling, settings, "sampling")
        check_types(Sampling, settings, "sampling.")
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    return Sampling(**settings)


def model_sample_rate(path: str | Path) -> int:
    """A model dir's audio rate (its codec's ``sample_rate``), read without loading the model, so that
    input audio can be read and checked before the slow load."""
    import json

    d = model_dir(path)
    c = codec_dir(d, read_model_config(d)) / "config.json"
    if not c.is_file():
        raise FileNotFoundError(f"{c.parent}: the model's codec dir has no config.json")
    return int(json.loads(c.read_text())["codec"]["sample_rate"])


def check_text(text) -> str:
    """The text TTS accepts: a non-empty string of at most :data:`MAX_TEXT_CHARS` characters, with something
    to speak: the models are English, so a text of other scripts or emoji alone, without a Latin letter or digit,
    is refused (it came out as a moment of noise or babble; ASCII punctuation alone still takes the plain form).
    Letters of other scripts in an English text are left to the model; :func:`foreign_letters` counts them."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"text must be a non-empty string, got {text!r}")
    if len(text) > MAX_TEXT_CHARS:
        raise ValueError(f"text has {len(text)} characters; at most {MAX_TEXT_CHARS} per call "
                         "(split a long text into several calls)")
    if not text.isascii() and not speakable(text):
        raise ValueError(f"text has nothing to speak: no Latin letters or digits in {text[:40]!r} "
                         "(the models speak English)")
    return text


def speakable(text: str) -> bool:
    """Whether ``text`` has something an English model can say: a Latin letter or a digit."""
    return any(c.isascii() and c.isalnum() for c in text)


def foreign_letters(text: str) -> int:
    """How many letters of ``text`` are outside the Latin script's ASCII letters (accents included), which an
    English model may drop or mispronounce."""
    return sum(1 for c in text if c.isalpha() and not c.isascii())


def codec_dir(d: Path, cfg: dict) -> Path:
    """The codec dir a model dir's ``slm_config.json`` (``cfg``) names: absolute, or relative to ``d``."""
    return Path(cfg["codec"]) if Path(cfg["codec"]).is_absolute() else d / cfg["codec"]


def set_decoder(model_dir: str | Path, codec: str | Path) -> Path:
    """Give a speech-LM model dir a new codec that tokenises exactly as its own (a decoder fine-tune:
    ``slm codec train`` with ``train_only``): its audio changes, its tokens (and so the LM) stay valid.
    A codec that would give other tokens is refused and the model dir is left as it was."""
    import json
    import shutil

    d, src = Path(model_dir), Path(codec)
    cfg = read_model_config(d)
    own_dir = codec_dir(d, cfg)
    own, new = _load_codec(own_dir, cfg.get("codec_class")), _load_codec(src, cfg.get("codec_class"))
    if not hasattr(own, "tokenises_like") or not own.tokenises_like(new):
        raise ValueError(f"{src} does not tokenise as {d}'s own codec ({own_dir}): only the decode-only modules "
                         f"({', '.join(getattr(own, 'decode_only', ()))}) may differ, or the LM's tokens would mean "
                         "something else. Fine-tune the decoder with `train_only` (README \"Decoder fine-tune\")")
    dest = own_dir if own_dir.parent == d else d / "codec"  # an external codec: the model gets its own copy
    tmp, old = d / (dest.name + ".new"), d / (dest.name + ".old")
    for x in (tmp, old):
        shutil.rmtree(x, ignore_errors=True)
    shutil.copytree(src, tmp)
    cfg.update(codec=dest.name, codec_decoder_from=str(src.resolve()))
    (d / "slm_config.json.new").write_text(json.dumps(cfg, indent=2) + "\n")
    # the old codec is moved aside, not deleted, until the new one is in place
    if dest.exists():
        dest.rename(old)
    tmp.rename(dest)
    os.replace(d / "slm_config.json.new", d / "slm_config.json")
    shutil.rmtree(old, ignore_errors=True)
    return dest


def voice_files(d: Path) -> list[tuple[str, Path, str]]:
    """``(name, file, transcript)`` of every bundled voice in ``d/voices`` (the tokens are not read)."""
    from safetensors import safe_open

    out = []
    for f in sorted((d / "voices").glob("*.safetensors")) if (d / "voices").is_dir() else []:
        with safe_open(str(f), "pt") as fh:
            out.append((f.stem, f, (fh.metadata() or {}).get("text", "")))
    return out


def default_model_dir() -> Path:
    env = os.environ.get(DEFAULT_DIR_ENV)
    d = Path(env) if env else Path(__file__).resolve().parent.parent / "checkpoints" / "default"
    if not (d / "slm_config.json").exists():
        raise FileNotFoundError(f"no default speech-LM model at {d}; build it with `slm recipe default` "
                                f"or set ${DEFAULT_DIR_ENV}")
    return d


class SpeechPipeline:
    """Text/speech in, text/speech out, on one backbone + LoRA adapter + acoustic head + codec."""

    def __init__(self, backbone, tokenizer, layout: TokenLayout, codec, head: AcousticHead | None = None,
                 voices: dict[str, Voice] | None = None, sampling: Sampling | None = None,
                 chunk_frames: int = 12, context_frames: int = 8, teacher_spec: str = "whisper-base-ct2",
                 first_chunk_frames: int = 4, merge: bool = False, int8: bool | str = False, tts_aligned: bool = False,
                 asr_aligned: bool = False, tts_phones: bool = False, semantic_only: bool = False,
                 reader: CTCReader | None = None, joint: JointConfig | None = None, asr_method: str | None = None,
                 fusion: FusionConfig | None = None, model_dir: str | Path | None = None):
        if codec.semantic_codebook_size != layout.n_semantic:
            raise ValueError(f"codec has {codec.semantic_codebook_size} semantic codes, layout {layout.n_semantic}")
        variant = getattr(getattr(codec, "config", None), "variant", type(codec).__name__)
        if semantic_only and variant not in TWO_STREAM:
            raise ValueError(f"semantic_only speech needs a codec that decodes its semantic stream alone {TWO_STREAM} "
                             f"(trained with acoustic_dropout); this one is {variant!r}")
        if codec.n_acoustic_codebooks and head is None and not semantic_only:
            raise ValueError("the codec has an acoustic stream (Ka>0) but no acoustic head was given")
        self.lm, self.tokenizer, self.layout, self.codec, self.head = backbone, tokenizer, layout, codec, head
        self._voices = dict(voices or {})
        self.sampling = sampling or Sampling()
        # TTS in the aligned form (each word fed before its frames, slm.templates.tts_aligned_example):
        # the default of models trained with it (slm_config.json "tts_aligned"); `aligned=` per call
        self.tts_aligned = tts_aligned
        # ASR in the aligned form (each word right after its frames, slm.templates.asr_aligned_example): the
        # default of models trained with it (slm_config.json "asr_aligned"); `aligned=` per call
        self.asr_aligned = asr_aligned
        # aligned TTS in the phone-bridged form (each word followed by its phones, from espeak-ng's G2P,
        # adapters.g2p): the default of models trained with it (slm_config.json "tts_phones")
        self.tts_phones = tts_phones
        # speak from the semantic tokens alone: the codec decodes them without acoustic codes (sac / sacodec
        # trained with acoustic_dropout), so the acoustic head is skipped (slm_config.json "semantic_only")
        self.semantic_only = semantic_only
        # a CTC reader of the semantic tokens (slm.ctc_reader): ASR by it alone ("ctc") or by joint decoding (the
        # LM's beam search scored by the reader's CTC prefix probabilities; `joint` sets its weight and beam)
        if reader is not None and reader.cfg.n_codes != layout.n_semantic:
            raise ValueError(f"the CTC reader reads {reader.cfg.n_codes} semantic codes, the layout has "
                             f"{layout.n_semantic}: a reader of another codec's tokens")
        if reader is not None and reader.cfg.acoustic_codes:
            per_frame = acoustic_ratio(codec) * codec.n_acoustic_codebooks if codec.n_acoustic_codebooks else 0
            size = getattr(getattr(codec, "config", None), "acoustic_codebook_size", None)
            if per_frame != reader.cfg.acoustic_per_frame or (size is not None and size > reader.cfg.acoustic_codes):
                raise ValueError(f"the CTC reader reads {reader.cfg.acoustic_per_frame} acoustic codes per frame "
                                 f"out of {reader.cfg.acoustic_codes}; the codec gives {per_frame} out of {size}: "
                                 "a reader of another codec's tokens")
        self.reader, self.joint = (reader.eval() if reader is not None else None), joint or JointConfig()
        # "fused": the reader's CTC beam search with a lexicon and the backbone's own LM at word ends
        # (slm.fused_asr); `fusion` sets weights, beam and lexicon (a spec, or a file relative to `model_dir`)
        self.fusion, self.model_dir = fusion or FusionConfig(), model_dir
        self._lexicon: tuple[str, Lexicon] | None = None  # (spec, lexicon): rebuilt when fusion.lexicon changes
        self._text_scorer: tuple[tuple, TextScorer] | None = None  # ((fusion.text_lm, dtype), scorer)
        # what asr() does by default (slm_config.json "asr_method"): the LM unless the model says otherwise
        # (joint decoding measured worse than either part alone on the bundle: docs/results/joint_asr)
        self.asr_method = asr_method or "lm"
        if self.asr_method not in ASR_METHODS:
            raise ValueError(f"unknown ASR method {self.asr_method!r}; expected one of {ASR_METHODS}")
        if self.asr_method != "lm" and reader is None:
            raise ValueError(f"ASR method {self.asr_method!r} needs a CTC reader (ctc_reader/ in the model dir)")
        # a short first chunk lowers time to first audio; later chunks are longer (fewer decode calls)
        self.chunk_frames, self.context_frames, self.first_chunk_frames = chunk_frames, context_frames, first_chunk_frames
        self.teacher_spec, self._teacher = teacher_spec, None  # only for codecs that encode with a teacher
        self.lm.eval()
        # what generates speech/text tokens: `lm` itself, or its merged copy (see merge_for_inference)
        self.infer_lm = self.lm
        # int8: the acoustic head speaks through an int8 copy too (built on first use, see _speaking_head)
        self.head_int8, self._head8 = False, None
        if merge or int8:
            self.merge_for_inference(int8)
        if head is not None:
            head.eval()

    def merge_for_inference(self, int8: bool | str = False) -> None:
        """Generate with :func:`slm.generate.inference_copy` of ``lm``: the LoRA adapter merged into a
        plain copy (~2x faster decoding; ``int8``: int8 weights too, faster still, approximate). ``lm``
        keeps the adapter, so :meth:`chat` still gets the exact base model through ``disable_adapter``
        (costs a second copy of the weights: ~0.5 GB for SmolLM2-135M in fp32)."""
        if self.infer_lm is not self.lm:
            raise RuntimeError("merge_for_inference was already applied")
        mode = int8_mode(int8)
        self.infer_lm = inference_copy(self.lm, mode, self._calibration_ids() if mode == "w8a8" else None)
        self.head_int8 = mode

    CALIBRATION_TEXT = "The quick brown fox jumps over the lazy dog, and then it says: how are you today?"

    def _calibration_ids(self) -> Tensor:
        """What w8a8 decoding calibrates its activation smoothing on (:class:`slm.generate.Int8Linear`): the TTS
        prompt of :attr:`CALIBRATION_TEXT` in the default voice (text tokens, and that voice's audio tokens
        where it has a transcript), as the model reads it when it speaks."""
        return next(self._tts_plan(self.CALIBRATION_TEXT, None, None, None, None, 20.0, 0, False, best_of=1))[1]

    @classmethod
    def from_pretrained(cls, path: str | Path = "default", device: str = "cpu", threads: int | None = None,
                        backbone: str | None = None, merge: bool = True, int8: bool | str | None = False,
                        semantic_only: bool | None = None) -> SpeechPipeline:
        """Load a model dir. ``merge``: generate with the adapter merged into a copy of the backbone
        (:meth:`merge_for_inference`, ~2x faster decoding); False keeps peft's wrappers (less memory).
        ``int8``: decode with int8 backbone weights as well (faster, approximate; see Int8Linear); None: the
        model dir's own setting (``"int8"`` in slm_config.json, on CPU only; what the CLI and demo use).
        ``semantic_only``: speak without the acoustic head (see :attr:`semantic_only`); None: the model's own
        setting (slm_config.json)."""
        from adapters.backbones import extend_vocabulary, load_backbone
        from adapters.lora import load_adapter
        from codec.runtime import set_threads

        if threads:
            set_threads(threads)
        from safetensors import SafetensorError

        d = model_dir(path)
        cfg = read_model_config(d)
        missing = [k for k in ("backbone", "codec") if k not in cfg and not (k == "backbone" and backbone)]
        if missing:
            raise ValueError(f"{d / 'slm_config.json'}: names no {' and no '.join(missing)}")
        sampling = sampling_from_config(cfg.get("sampling"), str(d / "slm_config.json"))
        if int8 is None:
            int8 = int8_mode(cfg.get("int8", False)) if torch.device(device).type == "cpu" else None
        if not any((d / "adapter" / f).is_file() for f in ("adapter_model.safetensors", "adapter_model.bin")):
            # peft would otherwise take the dir for a hub id and try to download it
            raise FileNotFoundError(f"{d / 'adapter'}: the LoRA adapter's weights (adapter_model.safetensors) are "
                                    "missing: the model dir is incomplete")
        try:
            layout = TokenLayout.load(d)
        except (KeyError, TypeError, json.JSONDecodeError) as e:
            raise ValueError(f"{d / 'token_layout.json'}: not a token layout ({type(e).__name__}: {e})") from None
        try:
            bb = load_backbone(backbone or cfg["backbone"])
            extend_vocabulary(bb.model, bb.tokenizer, layout)
            lm = load_adapter(bb.model, d / "adapter").to(device)
            head = AcousticHead.from_pretrained(d).to(device) if (d / "acoustic_head.json").exists() else None
            cpath = codec_dir(d, cfg)
            codec = _load_codec(cpath, cfg.get("codec_class"))
            if isinstance(codec, torch.nn.Module):
                codec.to(device).eval()
            voices = {name: Voice(name, CodecTokens.load(f), text) for name, f, text in voice_files(d)}
            info = cpath / "training.json"
            spec = (json.loads(info.read_text()).get("teacher_spec") if info.exists() else None) or "whisper-base-ct2"
            reader = CTCReader.from_pretrained(d / "ctc_reader").to(device) if (d / "ctc_reader").is_dir() else None
        except SafetensorError as e:  # a truncated or damaged weights file
            raise ValueError(f"{d}: a weights file of this model dir is damaged ({e})") from None
        if reader is None and cfg.get("asr_method") in ("fused", "joint"):
            raise FileNotFoundError(f"{d / 'ctc_reader'}: missing, and slm_config.json's asr_method "
                                    f"{cfg['asr_method']!r} reads with it: the model dir is incomplete")
        return cls(lm, bb.tokenizer, layout, codec, head, voices, sampling, teacher_spec=spec,
                   merge=merge, int8=int8, tts_aligned=bool(cfg.get("tts_aligned", False)),
                   asr_aligned=bool(cfg.get("asr_aligned", False)), tts_phones=bool(cfg.get("tts_phones", False)),
                   semantic_only=bool(cfg.get("semantic_only", False)) if semantic_only is None else semantic_only,
                   reader=reader, joint=JointConfig(**cfg.get("asr_joint", {})), asr_method=cfg.get("asr_method"),
                   fusion=FusionConfig(**cfg.get("asr_fused", {})), model_dir=d)

    # ---- basics ---------------------------------------------------------------------------------------------
    @property
    def sample_rate(self) -> int:
        return int(self.codec.sample_rate)

    def voices(self) -> list[str]:
        return sorted(self._voices)

    @torch.no_grad()
    def encode(self, wav: Tensor, sample_rate: int) -> CodecTokens:
        """Audio -> codec tokens; codecs that encode with their teacher (sac) get its units."""
        wav = check_audio(wav, sample_rate, self.sample_rate)
        if not getattr(self.codec, "needs_teacher_at_encode", False):
            return self.codec.encode(wav)
        from adapters.kmeans import teacher_batch_for
        from adapters.teachers import load_teacher

        if self._teacher is None:
            self._teacher = load_teacher(self.teacher_spec)
        return self.codec.encode(wav, teacher=teacher_batch_for(self.codec, self._teacher, wav))

    def _voice(self, voice) -> Voice | None:
        if voice is None:
            return self._voices[self.voices()[0]] if self._voices else None
        if isinstance(voice, Voice):
            return voice
        if isinstance(voice, CodecTokens):
            return Voice("prompt", voice[0])
        if isinstance(voice, Tensor):
            return Voice("prompt", self.encode(voice, self.sample_rate)[0])
        if isinstance(voice, str) and voice in self._voices:
            return self._voices[voice]
        if isinstance(voice, (str, Path)) and Path(voice).exists():
            from codec.audio import load_audio

            return Voice(Path(voice).stem, self.encode(load_audio(str(voice), self.sample_rate), self.sample_rate)[0])
        raise ValueError(f"unknown voice {voice!r}: expected one of {self.voices()}, a wav path, a [1, N] "
                         f"tensor at {self.sample_rate} Hz, or CodecTokens")

    def _sampling(self, temperature, top_k, top_p) -> Sampling:
        given = {"temperature": temperature, "top_k": top_k, "top_p": top_p}
        return dataclasses.replace(self.sampling, **{k: v for k, v in given.items() if v is not None})

    # ---- decoding frames to audio ---------------------------------------------------------------------------
    def _tokens(self, codes: list[int], frames: list, global_: Tensor | None) -> CodecTokens:
        sem = torch.tensor(codes, dtype=torch.long).view(1, 1, -1)
        ka = self.codec.n_acoustic_codebooks
        if not ka:
            ac = torch.zeros(1, 0, len(codes), dtype=torch.long)
        elif any(f is None for f in frames):  # semantic-only speech: placeholder codes the decoder does not read
            ac = torch.zeros(1, ka, len(codes) * acoustic_ratio(self.codec), dtype=torch.long)
        else:
            ac = acoustic_from_frames(torch.stack(frames).cpu(), ka)[None]
        return CodecTokens(sem, ac, global_)

    @property
    def _speaking_head(self) -> AcousticHead | None:
        """The head that voices generated frames: none when speaking from the semantic tokens alone. With
        ``head_int8`` (set with int8 decoding, on CPU) an int8 copy of ``head`` (:func:`slm.generate.quantize_int8`:
        its projections through the int8 kernel, ~3x faster per frame at one to four rows; logits within ~1%),
        made once per ``head`` object; ``head`` itself stays exact (head-tokens, training and evaluation read it).
        Int8 weights only in every int8 mode: with int8 activations its small matrices ran slower (2.1 against
        1.9 ms a frame at two rows, docs/results/int8_w8a8).

        Why: at one row the head's 256 x 8192 fp32 output projection is memory-bound (~1 ms per code, two codes
        per frame), so the head took ~5-6 ms of a ~35 ms int8 TTS frame."""
        if self.semantic_only or self.head is None:
            return None
        if not self.head_int8 or self.head.in_proj.weight.device.type != "cpu":
            return self.head
        if self._head8 is None or self._head8[0] is not self.head:
            h8 = copy.deepcopy(self.head).eval()
            quantize_int8(h8)
            self._head8 = (self.head, h8)
        return self._head8[1]

    def _decode(self, tokens: CodecTokens) -> Tensor:
        return self.codec.decode(tokens, semantic_only=True) if self.semantic_only else self.codec.decode(tokens)

    def _voice_vec(self, v: Voice | None) -> Tensor | None:
        if self._speaking_head is None or v is None:
            return None
        dev = self.head.in_proj.weight.device
        g = None if v.tokens.global_ is None else v.tokens.global_.to(dev)
        return self.head.voice_vector(g, v.tokens.acoustic.to(dev))

    def _can_stream(self) -> bool:
        """Causal codecs stream exactly (``codec.stream_decode`` == ``decode``); others re-decode windows."""
        return (hasattr(self.codec, "stream_decode") and not self.semantic_only
                and bool(getattr(getattr(self.codec, "config", None), "causal", False)))

    def _window_decode(self, codes: list[int], frames: list, global_: Tensor | None, a: int, b: int) -> Tensor:
        """Non-causal codecs: audio of frames [a, b) decoded with `context_frames` of left context. ``[1, n]``."""
        c = max(0, a - self.context_frames)
        wav = self._decode(self._tokens(codes[c:b], frames[c:b], global_)).reshape(1, -1).float().cpu()
        hop = wav.shape[-1] / (b - c)  # samples per semantic frame
        return wav[:, round((a - c) * hop):]

    def _stream_frames(self, prompt: Tensor, sampling: Sampling, max_frames: int, v: Voice | None,
                       gen: torch.Generator, history: tuple[list[int], list] = ((), ()),
                       given: list | None = None, **gen_kw) -> Iterator[Tensor]:
        """Generate frames after ``prompt`` and yield audio ``[1, n]`` every ``chunk_frames`` frames.

        ``history`` (codes, acoustic frames) is decoded as left context only (continuation); ``gen_kw``:
        ``min_frames`` / ``words`` / ``max_word_frames`` of :func:`generate_frames`. ``given``: frames made
        already (a best-of-N choice), decoded instead of generating."""
        g = v.tokens.global_ if v is not None else None
        voice_vec = self._voice_vec(v)
        codes, frames = list(history[0]), list(history[1])
        start = emitted = len(codes)
        pending: list[CodecTokens] = []
        streamer = self.codec.stream_decode(_drain(pending)) if self._can_stream() else None

        def emit(a: int, b: int) -> Tensor:
            if streamer is None:
                return self._window_decode(codes, frames, g, a, b)
            # the first chunk of a continuation carries some of the prompt as decoder context
            lo = max(0, a - self.context_frames) if (a == start and start > 0) else a
            pending.append(self._tokens(codes[lo:b], frames[lo:b], g))
            wav = next(streamer).reshape(1, -1).float().cpu()
            return wav[:, round(wav.shape[-1] * (a - lo) / (b - lo)):]

        head = self._speaking_head
        past = [f for f in frames if f is not None] if head is not None and head.cfg.context else None
        made = given if given is not None else generate_frames(self.infer_lm, self.layout, prompt, head, sampling,
                                                               max_frames, voice_vec, gen, past_acoustic=past, **gen_kw)
        for fr in made:
            codes.append(fr.code)
            frames.append(fr.acoustic)
            if len(codes) - emitted >= (self.first_chunk_frames if emitted == start else self.chunk_frames):
                yield emit(emitted, len(codes)).clamp(-1, 1)
                emitted = len(codes)
        if len(codes) > emitted:
            yield emit(emitted, len(codes)).clamp(-1, 1)
        elif len(codes) == start:
            yield torch.zeros(1, 0)

    @torch.no_grad()
    def tts_tokens(self, text: str, voice=None, *, temperature: float | None = None, top_k: int | None = None,
                   top_p: float | None = None, max_seconds: float = 20.0, seed: int | None = None,
                   aligned: bool | None = None, best_of: int | None = None,
                   best_of_words: int | None = None) -> list[CodecTokens]:
        """The codec tokens :meth:`tts` would decode, one :class:`CodecTokens` per sentence (same seed, same tokens)."""
        out = []
        for sentence, prompt, s, hi, v, gen, kw in self._tts_plan(text, voice, temperature, top_k, top_p, max_seconds,
                                                                  seed, aligned, best_of, best_of_words):
            fr = list(self._sentence_frames(sentence, prompt, s, hi, v, gen, kw))
            out.append(self._tokens([f.code for f in fr], [f.acoustic for f in fr], v.tokens.global_ if v else None))
        return out

    def _sentence_frames(self, sentence: str, prompt: Tensor, s: Sampling, hi: int, v: Voice | None,
                         gen: torch.Generator, kw: dict) -> Iterator:
        """One sentence's frames, as they are made (:func:`generate_best`). best_of 1: :func:`generate_frames`' own.
        Above 1: ``s.best_of`` candidates (side by side where the backbone allows) and the frames of the one the CTC
        reader scores highest (:meth:`reader_score`), as they are chosen: every ``s.best_of_words`` words in the
        aligned form (scored against the words spoken so far), else once per sentence."""
        words = split_words(sentence) if "words" in kw else []

        def score(frames: list, spoken: int | None) -> float:
            text = sentence if spoken is None else " ".join(words[:spoken])
            return self.reader_score(text, [f.code for f in frames], [f.acoustic for f in frames])

        return generate_best(self.infer_lm, self.layout, prompt, self._speaking_head, s, hi, s.best_of, score,
                             s.best_of_words, self._voice_vec(v), gen, **kw)

    @torch.no_grad()
    def reader_score(self, text: str, codes: list[int] | Tensor, frames: list | Tensor | None = None) -> float:
        """log p(``text`` | tokens) by the CTC reader: how well generated speech tokens say ``text`` (in the
        reader's alphabet; -inf when the frames are too few to spell it). ``frames``: the per-frame acoustic
        codes (``[Ts, r * Ka]`` or a list of ``[r * Ka]``), needed by a reader of both streams."""
        if self.reader is None:
            raise ValueError("scoring speech tokens against text needs a CTC reader: this model dir has no "
                             "ctc_reader/ (train one with `slm ctc-reader train`)")
        codes = torch.as_tensor(codes).long().flatten()
        ids = char_ids(text)
        if codes.numel() == 0:
            return -math.inf
        ac = None
        if self.reader.cfg.acoustic_codes:
            if frames is None or (isinstance(frames, list) and any(f is None for f in frames)):
                raise ValueError("this CTC reader reads the acoustic codes too: give each frame's")
            ac = torch.stack(list(frames)) if isinstance(frames, list) else torch.as_tensor(frames)
        logp = self.reader.log_probs(reader_codes(codes, ac, self.reader.cfg.columns))
        if not len(ids):
            return float(logp[:, self.reader.blank].sum())
        nll = torch.nn.functional.ctc_loss(logp[:, None].double(), ids[None], torch.tensor([len(logp)]),
                                           torch.tensor([len(ids)]), blank=self.reader.blank, reduction="sum")
        return -float(nll)

    @torch.no_grad()
    def aligned_asr_scores(self, words: list[list[str]], codes: list, word_of_frame: list) -> list[float]:
        """log p(``words[i]`` | speech) by the speech LM's aligned ASR form (slm.templates.asr_aligned_example), for
        several token sequences at once: ``codes[i]`` (semantic codes) with ``word_of_frame[i]`` (the index of the
        word of ``words[i]`` each frame is spoken over, non-decreasing from 0, as aligned TTS makes them:
        ``Frame.word``). Each word is placed right after its frames and its text tokens are scored; a word without
        frames gets none (it follows the word before). One padded forward for all sequences. -inf for a sequence
        with no frames. How best-of TTS and fused ASR's rescoring ask the speech LM which tokens say which words."""
        if not (len(words) == len(codes) == len(word_of_frame)):
            raise ValueError(f"{len(words)} word lists, {len(codes)} code sequences and {len(word_of_frame)} word "
                             "maps: give one of each per sequence")
        seqs, out = [], [-math.inf] * len(codes)
        for i, (ws, c, wf) in enumerate(zip(words, codes, word_of_frame, strict=True)):
            if not ws:
                raise ValueError(f"sequence {i}: aligned_asr_scores needs at least one word")
            c = torch.as_tensor(c).long().flatten()
            wf = [int(x) for x in wf]
            if len(wf) != c.numel():
                raise ValueError(f"sequence {i}: {c.numel()} frames but {len(wf)} word indices")
            if any(b < a for a, b in itertools.pairwise(wf)) or any(not 0 <= x < len(ws) for x in wf):
                raise ValueError(f"sequence {i}: word indices must be non-decreasing in [0, {len(ws)})")
            if not c.numel():
                continue
            cuts = [bisect.bisect_left(wf, k) for k in range(len(ws))] + [len(wf)]
            ex = asr_aligned_from_cuts(self.layout, self.layout.codes_to_ids(c).tolist(), cuts,
                                       word_ids(self.tokenizer, ws))
            seqs.append((i, ex.input_ids, ex.labels))
        if not seqs:
            return out
        dev = next(self.infer_lm.parameters()).device
        n = max(len(x) for _, x, _ in seqs)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        x = torch.full((len(seqs), n), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), n), dtype=torch.long)
        for j, (_, ids, _) in enumerate(seqs):
            x[j, : len(ids)] = ids
            mask[j, : len(ids)] = 1
        logp = self.infer_lm(input_ids=x.to(dev), attention_mask=mask.to(dev)).logits.float().log_softmax(-1).cpu()
        for j, (i, _, labels) in enumerate(seqs):
            at = ((labels != IGNORE) & (labels < self.layout.base_vocab)).nonzero().flatten()  # the words' tokens
            out[i] = float(logp[j, at - 1, labels[at]].sum())
        return out

    def _tts_plan(self, text, voice, temperature, top_k, top_p, max_seconds, seed, aligned, best_of=None,
                  best_of_words=None):
        """Per sentence: (prompt, sampling, max frames, voice, generator, the rest of generate_frames' arguments)."""
        check_text(text)
        if not max_seconds > 0:
            raise ValueError(f"max_seconds must be > 0, got {max_seconds}")
        aligned = self.tts_aligned if aligned is None else bool(aligned)
        v = self._voice(voice)
        s = self._sampling(temperature, top_k, top_p)
        if best_of is not None:
            s = dataclasses.replace(s, best_of=best_of)
        if best_of_words is not None:
            s = dataclasses.replace(s, best_of_words=best_of_words)
            if best_of_words and s.best_of == 1:
                raise ValueError(f"best_of_words={best_of_words} chooses among best_of candidates, and best_of is 1: "
                                 "give best_of > 1 as well")
            if best_of_words and not aligned:
                raise ValueError(f"best_of_words={best_of_words} chooses every few words of the aligned form; the "
                                 "plain form speaks from the whole sentence (choose once per sentence: best_of_words=0)")
        gen = _generator(seed)
        if s.best_of > 1 and self.reader is None:
            raise ValueError(f"best_of={s.best_of} picks among candidates by the CTC reader: this model dir has no "
                             "ctc_reader/ (train one with `slm ctc-reader train`, or use best_of=1)")
        if s.best_of > 1 and self.reader.cfg.acoustic_codes and self._speaking_head is None:
            raise ValueError(f"best_of={s.best_of}: this CTC reader reads acoustic codes, which semantic-only "
                             "speech does not make; use best_of=1 or speak with the acoustic head")
        rate = self.codec.semantic_rate
        ptext, pcodes = (v.text, v.tokens.semantic[0]) if (v is not None and v.text) else (None, None)
        for sentence in split_sentences(text):
            hi = s.max_frames(sentence, max_seconds, rate)
            kw = {"min_frames": s.min_frames(sentence, rate, hi)}
            words = split_words(sentence) if aligned else []
            if words:  # a sentence with no word characters ("...", "?!") is spoken in the plain form
                kw |= {"words": self._word_ids(words), "max_word_frames": s.word_caps(words, rate)}
            if s.cfg_scale != 1.0:  # guidance: the same audio without the text, in the continuation form
                kw["uncond_prompt"] = audio_only_prompt(self.layout, pcodes)
            yield sentence, tts_prompt(self.tokenizer, self.layout, sentence, ptext, pcodes), s, hi, v, gen, kw

    def _word_ids(self, words: list[str]) -> list[list[int]]:
        """Each word's token ids for aligned TTS, followed by its phones for a phone-bridged model."""
        if not self.tts_phones:
            return word_ids(self.tokenizer, words)
        from adapters.g2p import phonemize

        return word_ids(self.tokenizer, words, phonemize(words))

    # ---- tasks ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def tts_stream(self, text: str, voice=None, *, temperature: float | None = None, top_k: int | None = None,
                   top_p: float | None = None, max_seconds: float = 20.0, seed: int | None = None,
                   aligned: bool | None = None, best_of: int | None = None, best_of_words: int | None = None,
                   timings: list | None = None) -> Iterator[Tensor]:
        """Audio chunks ``[1, n]`` as they are generated; they concatenate exactly to :meth:`tts`.

        Long text is split into sentences (each bounded by ``max_seconds``), generated one after another.
        ``aligned``: feed each word before its frames (the default of a model trained that way, see
        :attr:`tts_aligned`); False speaks the plain form from the whole sentence. ``best_of`` (None: the
        model's ``Sampling.best_of``): sample that many candidates per sentence and speak the one the CTC
        reader reads as the sentence best (N candidates side by side; a sentence's audio starts when its candidates
        are done). ``best_of_words`` (None: the model's): choose every that many words instead, so the chosen words
        stream while the rest is drawn (aligned form; :func:`slm.generate.generate_best`)."""
        offset = 0  # samples spoken so far
        for sentence, prompt, s, hi, v, gen, kw in self._tts_plan(text, voice, temperature, top_k, top_p, max_seconds,
                                                                  seed, aligned, best_of, best_of_words):
            made = self._sentence_frames(sentence, prompt, s, hi, v, gen, kw)
            seen: list[int] = []  # each frame's word
            n = 0
            for chunk in self._stream_frames(prompt, s, hi, v, gen, given=_tap(made, seen), **kw):
                n += chunk.shape[-1]
                yield chunk
            if timings is not None:
                timings += _word_times(split_words(sentence) if "words" in kw else [], sentence, seen,
                                       offset / self.sample_rate, n / self.sample_rate)
            offset += n

    def tts(self, text: str, voice=None, **kw) -> Tensor:
        """Synthesize ``text`` -> ``[1, N]`` float audio at :attr:`sample_rate`. ``timings=[]`` (also for
        :meth:`tts_stream`, filled as each sentence is spoken): a list that receives one :class:`WordTime` per word
        (aligned TTS: when the frames of that word begin and end, in seconds from the start of the audio), or
        per sentence spoken in the plain form."""
        return torch.cat(list(self.tts_stream(text, voice, **kw)), dim=-1)

    @torch.no_grad()
    def voice_semantic(self, codes: Tensor, text: str, words: list | None = None, voice=None,
                       generator: torch.Generator | None = None, seconds: float | None = None) -> CodecTokens:
        """The acoustic codes the head gives a known semantic token sequence: ``codes [Ts]`` of an utterance
        of ``text`` are teacher-forced through the LM in the model's TTS form (aligned when the model speaks
        that way and ``words`` are given: ``[start_s, end_s, word]`` or, phone-bridged, ``[start_s, end_s,
        word, phones]`` entries, see :func:`slm.templates.with_phones`), and the head samples every frame's
        acoustic codes in ``voice``'s voice with the model's sampling settings. ``seconds``: the audio's length
        (word times are placed on the frames by it; default: the frames' length). What TTS would decode if the
        LM chose exactly these semantic tokens (``slm eval head``; ``slm head-tokens`` for decoder fine-tunes)."""
        if self.head is None:
            raise ValueError("this model has no acoustic head (its codec has no acoustic codebooks)")
        codes = torch.as_tensor(codes).reshape(-1).cpu()
        ex = self.tts_form_example(codes, text, words, seconds)
        dev = self.head.in_proj.weight.device
        out = self.infer_lm(input_ids=ex.input_ids[None].to(dev), output_hidden_states=True)
        h = out.hidden_states[-1][0, ex.semantic_pos.to(dev) - 1].to(self.head.in_proj.weight.dtype)
        v, s = self._voice(voice), self.sampling
        ac = self.head.generate_frames(h, codes.to(dev), self._voice_vec(v), s.head_temperature, s.head_top_k,
                                       generator)
        return self._tokens(codes.tolist(), list(ac.cpu()), v.tokens.global_ if v is not None else None)

    def tts_form_example(self, codes: Tensor, text: str, words: list | None = None, seconds: float | None = None):
        """The TTS training example of ``codes [Ts]`` spoken as ``text`` in the model's own TTS form (aligned,
        phone-bridged, when the model speaks that way and ``words`` are given; else plain), as
        :meth:`voice_semantic` teacher-forces it: its ``semantic_pos - 1`` are the positions whose hidden states
        the acoustic head reads (``slm head-fit`` caches them)."""
        from slm.templates import tts_aligned_example, tts_example

        codes = torch.as_tensor(codes).reshape(-1).cpu()
        if self.tts_aligned and words:
            seconds = seconds or codes.numel() / self.codec.semantic_rate
            return tts_aligned_example(self.tokenizer, self.layout, text, words, codes, seconds, phones=self.tts_phones)
        return tts_example(self.tokenizer, self.layout, text, codes)

    def _encode_one(self, wav: Tensor, sample_rate: int) -> CodecTokens:
        toks = self.encode(wav, sample_rate)
        if toks.batch_size != 1:
            raise ValueError(f"expected one clip ([N], [1, N] or [1, 1, N]), got a batch of {toks.batch_size}")
        return toks

    @torch.no_grad()
    def asr(self, wav: Tensor, sample_rate: int, max_new_tokens: int = 200, aligned: bool | None = None,
            method: str | None = None) -> str:
        """Transcribe ``wav``. ``method`` (None: :attr:`asr_method`, the model's setting, "lm" if unset):
        ``"fused"`` (needs a CTC reader): the reader's CTC beam search over characters, kept to the words of a
        lexicon and scored at each word end by the backbone's own LM (:func:`slm.fused_asr.fused_transcribe`,
        settings in :attr:`fusion`); ``"joint"`` (needs a CTC reader): the LM's beam search in the plain form,
        scored by the reader's CTC prefix probabilities (:func:`slm.ctc_reader.joint_transcribe`); ``"lm"`` (the
        default otherwise): the LM alone, in the aligned form when ``aligned`` (the streaming form, each word
        written right after its frames; the default of a model trained that way, see :attr:`asr_aligned`), else
        the whole transcript after the whole audio; ``"ctc"``: the reader alone (greedy CTC, lower case, no punctuation)."""
        toks = self._encode_one(wav, sample_rate)[0]
        acoustic = None
        if self.reader is not None and self.reader.cfg.acoustic_codes and toks.acoustic.shape[1]:
            acoustic = frames_from_acoustic(toks.acoustic[0], toks.ratio)
        return self.asr_tokens(toks.semantic[0, 0], max_new_tokens, aligned, method, acoustic=acoustic)

    def asr_segments(self, wav: Tensor, sample_rate: int, pauses: PauseConfig | None = None,
                     **kw) -> Iterator[WordTime]:
        """Transcribe a recording of any length piece by piece: it is split at its pauses into segments of at most
        ``pauses.max_seconds`` (:func:`codec.segment.split_at_pauses`; default 8 s, the models are trained on
        sentences), and each segment goes through :meth:`asr` (``kw``: its arguments). Yields one
        :class:`WordTime` per segment, in order, as it is done: its transcript and where it lies in ``wav`` (s).
        Silence gives no segment; a segment read as no words is skipped."""
        wav = check_audio(wav, sample_rate, sample_rate)  # [B, 1, N]; any rate: asr() resamples
        if wav.shape[0] != 1:
            raise ValueError(f"expected one clip ([N], [1, N] or [1, 1, N]), got a batch of {wav.shape[0]}")
        wav = wav[0]
        for a, b in split_at_pauses(wav[0], sample_rate, pauses):
            text = self.asr(wav[:, a:b], sample_rate, **kw)
            if text.strip():
                yield WordTime(text.strip(), round(a / sample_rate, 3), round(b / sample_rate, 3))

    def asr_stream(self, wav: Tensor, sample_rate: int, max_new_tokens: int = 200) -> Iterator[str]:
        """Aligned ASR as it goes: the transcript so far, once per word written (needs a model trained
        with the aligned ASR form to make sense; any model runs)."""
        codes = self._encode_one(wav, sample_rate).semantic[0, 0]
        ids: list[int] = []
        with torch.no_grad():
            for w in self._aligned_words(codes, max_new_tokens):
                ids += w
                yield self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    def _aligned_words(self, codes: Tensor, max_new_tokens: int) -> Iterator[list[int]]:
        """Aligned ASR of semantic codes, word by word (:func:`slm.generate.transcribe_aligned`)."""
        return transcribe_aligned(self.infer_lm, self.layout, codes, max_new_tokens, word_start=self.word_start())

    def lexicon(self) -> Lexicon | None:
        """The fused ASR's lexicon (:attr:`fusion` ``.lexicon``), built once; None: no lexicon."""
        spec = self.fusion.lexicon
        if spec is None:
            return None
        if self._lexicon is None or self._lexicon[0] != spec:
            self._lexicon = (spec, Lexicon.from_spec(spec, self.model_dir))
        return self._lexicon[1]

    def text_scorer(self) -> TextScorer:
        """The fused ASR's language model: the backbone's own (a plain copy without the adapter, built once, in
        ``fusion.dtype()``: peft's disabled wrappers would cost more per call), or the speech LM itself
        (``fusion.text_lm`` "adapted": the merged copy as it is, no extra memory)."""
        want = self.fusion.text_lm
        dtype = self.fusion.dtype(next(self.lm.parameters()).device) if want == "base" else None
        if self._text_scorer is None or self._text_scorer[0] != (want, dtype):
            if want == "adapted":
                scorer = TextScorer(self.infer_lm, self.tokenizer, base_only=False, vocab=self.layout.base_vocab,
                                    step=getattr(self.infer_lm, "fused_step", None))
            elif not hasattr(self.lm, "unload") and dtype == next(self.lm.parameters()).dtype:
                scorer = TextScorer(self.lm, self.tokenizer, base_only=False, vocab=self.layout.base_vocab)
            else:
                import copy

                base = copy.deepcopy(self.lm)
                base = base.unload() if hasattr(base, "unload") else base
                base = base.eval().to(dtype)
                for q in base.parameters():
                    q.requires_grad_(False)
                scorer = TextScorer(base, self.tokenizer, base_only=False, vocab=self.layout.base_vocab,
                                    step=FusedStep(base) if FusedStep.supports(base) else None)
            self._text_scorer = ((want, dtype), scorer)
        return self._text_scorer[1]

    def word_start(self) -> Tensor:
        """``[base_vocab]`` bool: the text tokens that begin a word (a leading space: byte-level BPE's ``Ġ``,
        sentencepiece's ``▁``), what aligned ASR keeps words apart with. Built once."""
        if getattr(self, "_word_start", None) is None:
            toks = self.tokenizer.convert_ids_to_tokens(list(range(self.layout.base_vocab)))
            self._word_start = torch.tensor([bool(t) and t[0] in "Ġ▁ " for t in toks])
        return self._word_start

    def _rescore(self, codes: Tensor, logp: Tensor, hyps: list[Hypothesis]) -> list[tuple[Hypothesis, float]]:
        """Fused ASR's best ``fusion.rescore_n`` transcripts re-ranked by ``score + rescore_weight * log p_aligned``,
        the speech LM's own log p(words | semantic tokens) in its aligned ASR form, each word placed after the
        frames the reader's CTC alignment gives it (:func:`slm.fused_asr.ctc_align`). Best first, with the
        aligned log p of each."""
        hyps = [h for h in hyps[: self.fusion.rescore_n] if h.text]
        if len(hyps) <= 1:
            return [(h, 0.0) for h in hyps] or [(Hypothesis("", 0.0, 0.0, 0.0), 0.0)]
        words, maps, up = [], [], self.reader.cfg.upsample
        for h in hyps:
            ws = h.text.split()
            starts = [0] + [i + 1 for i, ch in enumerate(h.text) if ch == " "]  # each word's first character
            first = ctc_align(logp, char_ids(h.text), self.reader.blank)
            begin = [first[i] // up for i in starts]
            words.append(ws)
            maps.append([max(0, bisect.bisect_right(begin, t) - 1) for t in range(codes.numel())])
        lp = self.aligned_asr_scores(words, [codes] * len(hyps), maps)
        w = self.fusion.rescore_weight
        return sorted(zip(hyps, lp, strict=True), key=lambda x: -(x[0].score + w * x[1]))

    @torch.no_grad()
    def asr_tokens(self, codes: Tensor, max_new_tokens: int = 200, aligned: bool | None = None,
                   method: str | None = None, acoustic: Tensor | None = None) -> str:
        """:meth:`asr` on semantic codes ``[Ts]`` (from this pipeline's codec). ``acoustic``: the per-frame
        acoustic codes ``[Ts, r * Ka]`` (``Utterance.acoustic``), needed by a CTC reader of both streams."""
        method = method or self.asr_method
        if method not in ASR_METHODS:
            raise ValueError(f"unknown ASR method {method!r}; expected one of {ASR_METHODS}")
        codes = torch.as_tensor(codes).long().flatten()
        if codes.numel() == 0:
            raise ValueError("no semantic frames to transcribe (empty audio?)")
        if method in READER_ASR_METHODS and self.reader is None:
            raise ValueError(f"ASR method {method!r} needs a CTC reader: this model dir has no ctc_reader/ "
                             "(train one with `slm ctc-reader train`)")
        if method in READER_ASR_METHODS:
            rcodes = reader_codes(codes, acoustic, self.reader.cfg.columns)
        if method == "ctc":
            return self.reader.transcribe(rcodes)
        if method == "fused":
            logp = self.reader.log_probs(rcodes)
            args = (logp, self.reader.blank, self.text_scorer(), self.lexicon(), self.fusion, self.reader.cfg.alphabet)
            if not self.fusion.rescore_weight:
                return fused_transcribe(*args)
            return self._rescore(codes, logp, fused_nbest(*args))[0][0].text
        if method == "joint":
            scorer = CTCPrefixScorer(self.reader.log_probs(rcodes), self.reader.blank, self.reader.cfg.alphabet)
            vocab = self.lm.get_input_embeddings().weight.shape[0]
            cfg = dataclasses.replace(self.joint, max_new_tokens=max_new_tokens)
            ids = joint_transcribe(self.infer_lm, self.tokenizer, asr_prompt(self.tokenizer, self.layout, codes),
                                   self.layout.text_mask(vocab).nonzero().flatten(), self.tokenizer.eos_token_id,
                                   scorer, cfg)
            return self.tokenizer.decode(ids, skip_special_tokens=True).strip()
        aligned = self.asr_aligned if aligned is None else bool(aligned)
        if aligned:
            ids = [t for w in self._aligned_words(codes, max_new_tokens) for t in w]
        else:
            prompt = asr_prompt(self.tokenizer, self.layout, codes)
            vocab = self.lm.get_input_embeddings().weight.shape[0]
            ids = generate_text(self.infer_lm, prompt, self.layout.text_mask(vocab), {self.tokenizer.eos_token_id},
                                max_new_tokens)
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    @torch.no_grad()
    def continue_(self, wav: Tensor, sample_rate: int, seconds: float = 3.0, *, temperature: float | None = None,
                  top_k: int | None = None, top_p: float | None = None, seed: int | None = None) -> Tensor:
        """Continue the speech in ``wav`` for up to ``seconds``; returns only the new audio ``[1, N]``."""
        if not seconds > 0:
            raise ValueError(f"seconds must be > 0, got {seconds}")
        toks = self._encode_one(wav, sample_rate)[0]
        codes = toks.semantic[0, 0]
        if codes.numel() < 2:
            raise ValueError(f"prompt too short: {codes.numel()} semantic frames, need at least 2")
        v = Voice("prompt", toks)
        frames = list(frames_from_acoustic(toks.acoustic[0], toks.ratio)) if toks.acoustic.shape[1] else [None] * codes.numel()
        gen = _generator(seed)
        max_frames = max(1, int(seconds * self.codec.semantic_rate))
        chunks = self._stream_frames(continuation_prompt(self.layout, codes), self._sampling(temperature, top_k, top_p),
                                     max_frames, v, gen, (codes.tolist(), frames))
        return torch.cat(list(chunks), dim=-1)

    @torch.no_grad()
    def chat(self, history: list[dict], max_new_tokens: int = 96) -> str:
        """The backbone's own chat reply (ChatML template) with the LoRA adapter disabled."""
        ids = self.tokenizer.apply_chat_template(history, add_generation_prompt=True, return_tensors="pt")
        ids = ids["input_ids"] if not isinstance(ids, Tensor) else ids
        vocab = self.lm.get_input_embeddings().weight.shape[0]
        stop = {self.tokenizer.eos_token_id}
        ctx = self.lm.disable_adapter() if hasattr(self.lm, "disable_adapter") else _null()
        with ctx:
            out = generate_text(self.lm, ids[0], self.layout.text_mask(vocab), stop, max_new_tokens)
        return self.tokenizer.decode(out, skip_special_tokens=True).strip()

    def dialogue(self, wav: Tensor, sample_rate: int, history: list[dict] | None = None, voice=None,
                 **sampling) -> DialogueTurn:
        """One spoken turn: ASR -> backbone chat (adapter disabled) -> TTS."""
        lat = {}
        t0 = time.perf_counter()
        user = self.asr(wav, sample_rate)
        lat["asr"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        msgs = list(history or []) + [{"role": "user", "content": user or "(silence)"}]
        reply = self.chat(msgs)
        if not speakable(reply):  # nothing TTS could speak (empty, emoji only)
            reply = "Sorry, I have no answer."
        lat["chat"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        audio = self.tts(reply, voice, **sampling)
        lat["tts"] = time.perf_counter() - t2
        lat["total"] = time.perf_counter() - t0
        return DialogueTurn(user, reply, audio, lat)


def _generator(seed: int | None) -> torch.Generator:
    """A private generator: seeded for reproducible output, else drawn from torch's global RNG
    (without reseeding it, unlike ``torch.seed()``)."""
    if seed is None:
        seed = int(torch.randint(0, 2**62, ()).item())
    return torch.Generator().manual_seed(check_seed(seed))


@dataclass
class WordTime:
    """Where a word (or, in the plain TTS form, a whole sentence) is spoken in TTS output, or where a transcribed
    segment lies in a recording (:meth:`SpeechPipeline.asr_segments`), in seconds."""

    text: str
    start: float
    end: float


def subtitles(times: list[WordTime], max_words: int = 7, max_seconds: float = 3.5) -> str:
    """SubRip (.srt) text of timed words (TTS) or segments (ASR): consecutive entries grouped into cues of at most
    ``max_words`` entries and ``max_seconds``."""
    def stamp(t: float) -> str:
        ms = round(t * 1000)
        return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"

    cues: list[list[WordTime]] = []
    for w in times:
        if cues and len(cues[-1]) < max_words and w.end - cues[-1][0].start <= max_seconds:
            cues[-1].append(w)
        else:
            cues.append([w])
    return "".join(f"{i}\n{stamp(c[0].start)} --> {stamp(c[-1].end)}\n{' '.join(w.text for w in c)}\n\n"
                   for i, c in enumerate(cues, 1))


def _tap(frames, words: list[int]) -> Iterator:
    """``frames`` passed through, each one's ``word`` noted in ``words``."""
    for f in frames:
        words.append(f.word)
        yield f


def _word_times(words: list[str], sentence: str, word_of_frame: list[int], start: float, seconds: float) -> list[WordTime]:
    """One sentence's :class:`WordTime` entries: per word from the frames spoken over it (``word_of_frame``, a
    frame lasting ``seconds / frames``; a word that got no frame, as when the sentence hit its length bound,
    is left out), or the whole sentence when ``words`` is empty (the plain form). ``start``: the sentence's
    offset in the audio."""
    n = len(word_of_frame)
    if not n:
        return []
    if not words:
        return [WordTime(sentence, round(start, 4), round(start + seconds, 4))]
    hop = seconds / n
    out = []
    for k, w in enumerate(words):
        idx = [t for t, x in enumerate(word_of_frame) if x == k]
        if idx:
            out.append(WordTime(w, round(start + idx[0] * hop, 4), round(start + (idx[-1] + 1) * hop, 4)))
    return out


def _drain(queue: list) -> Iterator:
    """Iterator over a list that is filled while it is consumed (feeds ``codec.stream_decode``)."""
    while queue:
        yield queue.pop(0)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False
