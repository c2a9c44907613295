"""`sana app`: the Gradio demo web app (needs the `app` extra: `pip install './packages/sana[app]'`).

    sana app                                   # the embedded default model on http://127.0.0.1:15432
    DEMO_PORT=7860 sana app --model_path Efficient-Large-Model/Sana_1600M_1024px_diffusers --device cuda

The page takes a prompt and a negative prompt, an aspect-ratio preset from the model's bucket table or a free size
(binned to the closest bucket, then resized and center-cropped back), steps, CFG and PAG scales, the sampler, a seed
(or a random one) and the number of images. It shows per-step progress, a gallery, the PNG files to download (with
the settings in their text chunks, as `sana generate` writes them) and the settings used, the seed included.

Every request goes through one queue with bounded concurrency and length; its inputs are checked on the server
against `Limits` (so a scripted client is held to them too) and a bad request gets a message in the page or an error
from `gradio_client`, never a dead server. The same generate function is the API endpoint `/generate`. Analytics
are off and the page loads nothing from outside the server (system fonts, no CDN).

Importing this module does not import Gradio; `build_app` and `run_app` do.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shlex
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_PORT = 15432  # the official demo's DEMO_PORT default
INSTALL_HINT = "install with `pip install './packages/sana[app]'`"
MAX_SEED = 2**31 - 1
MIN_SIDE = 64  # smallest width or height (pixels) a request may ask for
MAX_GUIDANCE = 20.0  # largest CFG or PAG scale a request may ask for
API_NAME = "generate"


@dataclass(frozen=True)
class Limits:
    """Bounds that keep one user from exhausting the machine; checked on the server for every request.

    Attributes:
        max_pixels: largest width x height of one image.
        max_steps: most solver steps per request.
        max_images: most images per request.
        concurrency: requests generated at the same time (the rest wait in the queue).
        queue_size: most requests waiting; further ones are refused until the queue drains.
        max_prompt_chars: longest prompt or negative prompt, in characters.
    """

    max_pixels: int = 1024 * 1024
    max_steps: int = 50
    max_images: int = 4
    concurrency: int = 1
    queue_size: int = 16
    max_prompt_chars: int = 2000

    def __post_init__(self) -> None:
        for name in ("max_pixels", "max_steps", "max_images", "concurrency", "queue_size", "max_prompt_chars"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Limits.{name} must be an int >= 1, got {value!r}")
        if self.max_pixels < MIN_SIDE * MIN_SIDE:
            raise ValueError(f"Limits.max_pixels must be at least {MIN_SIDE * MIN_SIDE} ({MIN_SIDE}x{MIN_SIDE})")


@dataclass(frozen=True)
class Request:
    """One checked generation request (what `AppBackend.check` returns)."""

    prompt: str
    negative_prompt: str
    width: int
    height: int
    steps: int
    guidance_scale: float
    pag_guidance_scale: float
    sampler: str
    seed: int
    randomize_seed: bool
    images: int


class AppBackend:
    """What the page and the API call: checks a request against the limits, generates, writes PNGs with metadata.

    Gradio-free, so it can be used and tested on its own; `build_app` wraps it in a page.

    Args:
        pipe: a loaded `sana.pipeline.SanaPipeline`.
        limits: the bounds every request is checked against.
        out_dir: where the PNGs are written (default: a new temporary folder); files older than `keep_seconds`
            are deleted as new requests come in.
        model: how the model is named in the page and the metadata (None: "embedded default").
        model_args: the `sana` command-line words that load this model (`--config`, `--model_path`, dotted
            overrides), repeated in the reproduce command (none: the embedded default).
        keep_seconds: how long written PNGs are kept.
    """

    def __init__(
        self,
        pipe: Any,
        limits: Limits = Limits(),  # a frozen dataclass: an immutable default
        *,
        out_dir: str | Path | None = None,
        model: str | None = None,
        model_args: Sequence[str] = (),
        keep_seconds: float = 3600.0,
    ) -> None:
        from sana.sampling import DEFAULT_STEPS, SAMPLERS

        self.pipe = pipe
        self.limits = limits
        self.model = model
        self.model_args = tuple(model_args)
        self.keep_seconds = keep_seconds
        self.out_dir = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="sana-app-"))
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.compression = int(pipe.autoencoder.spatial_compression)
        self.buckets = dict(pipe.bucket_table)  # only buckets the autoencoder can encode (see SanaPipeline)
        self.samplers = tuple(sorted(SAMPLERS))
        self.default_sampler = pipe.config.scheduler.vis_sampler
        self.default_steps = min(DEFAULT_STEPS.get(self.default_sampler, 20), limits.max_steps)
        self.max_side = int(math.isqrt(limits.max_pixels) * 2)  # a 4:1 image of max_pixels has sides 2x and x/2
        self._prune_lock = threading.Lock()

    # --- presets ------------------------------------------------------------------------------------------------

    @property
    def default_size(self) -> tuple[int, int]:
        """(height, width) of the square bucket (the model's native size)."""
        from sana.sampling import bin_size

        return bin_size(1, 1, self.buckets)

    def presets(self) -> dict[str, tuple[int, int]]:
        """Aspect-ratio presets: label ("W × H (ratio)") -> (height, width), from portrait to landscape."""
        shown = {}
        for h, w in sorted(self.buckets.values(), key=lambda size: -size[0] / size[1]):
            a, b = _ratio(w, h)
            shown[f"{w} × {h} ({a}:{b})"] = (h, w)
        return shown

    # --- checks -------------------------------------------------------------------------------------------------

    def check(
        self,
        prompt: Any,
        negative_prompt: Any,
        width: Any,
        height: Any,
        steps: Any,
        guidance_scale: Any,
        pag_guidance_scale: Any,
        sampler: Any,
        seed: Any,
        randomize_seed: Any,
        images: Any,
    ) -> Request:
        """Check one request against the limits; the message of the ValueError says what is wrong and the bound.

        Args:
            prompt: the text to draw (without `--ar`/`--hw` flags: the size comes from `width` and `height`).
            negative_prompt: what to steer away from ("" for none).
            width: pixels; binned to the closest bucket, the image is resized and cropped back to it.
            height: pixels (as `width`).
            steps: solver steps.
            guidance_scale: CFG scale.
            pag_guidance_scale: PAG scale (> 1 turns PAG on).
            sampler: one of the pipeline's samplers ("flow_dpm-solver", "flow_euler").
            seed: image i uses seed + i.
            randomize_seed: draw a new seed instead of `seed`.
            images: images per prompt.

        Returns:
            The request with its values as ints, floats and strings.

        Raises:
            ValueError: a value is missing, of the wrong type or out of bounds.
        """
        from sana_text import parse_prompt

        lim = self.limits
        prompt = _text("prompt", prompt, lim.max_prompt_chars)
        if not prompt.strip():
            raise ValueError("the prompt is empty: type what the image should show")
        negative_prompt = _text("negative prompt", "" if negative_prompt is None else negative_prompt,
                                lim.max_prompt_chars)  # fmt: skip
        parsed = parse_prompt(prompt)
        if parsed.hw is not None or parsed.aspect_ratio is not None:
            raise ValueError("size flags (--ar, --aspect_ratio, --hw) are not taken here: set the size with the "
                             "aspect-ratio preset or width and height")  # fmt: skip
        width, height = _whole("width", width), _whole("height", height)
        for name, side in (("width", width), ("height", height)):
            if not MIN_SIDE <= side <= self.max_side:
                raise ValueError(f"{name} must be between {MIN_SIDE} and {self.max_side} pixels, got {side}")
        if width * height > lim.max_pixels:
            raise ValueError(f"{width} × {height} = {width * height:,} pixels is more than this server allows "
                             f"({lim.max_pixels:,} pixels per image); ask for a smaller size")  # fmt: skip
        ratios = [h / w for h, w in self.buckets.values()]
        if not min(ratios) <= height / width <= max(ratios):
            raise ValueError(f"height / width = {height / width:.3g} is outside the model's buckets "
                             f"({min(ratios):.3g} to {max(ratios):.3g})")  # fmt: skip
        steps = _whole("steps", steps)
        if not 1 <= steps <= lim.max_steps:
            raise ValueError(f"steps must be between 1 and {lim.max_steps} on this server, got {steps}")
        images = _whole("images per prompt", images)
        if not 1 <= images <= lim.max_images:
            raise ValueError(f"images per prompt must be between 1 and {lim.max_images} on this server, got {images}")
        scales = []
        for name, value in (("CFG scale", guidance_scale), ("PAG scale", pag_guidance_scale)):
            number = _number(name, value)
            if not 0 <= number <= MAX_GUIDANCE:
                raise ValueError(f"{name} must be between 0 and {MAX_GUIDANCE:g}, got {number:g}")
            scales.append(number)
        if sampler not in self.samplers:
            raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(self.samplers)}")
        if not isinstance(randomize_seed, bool):
            raise ValueError(f"randomize seed must be true or false, got {randomize_seed!r}")
        if randomize_seed:
            seed = random.SystemRandom().randint(0, MAX_SEED - lim.max_images)
        else:
            seed = _whole("seed", seed)
            if not 0 <= seed <= MAX_SEED - lim.max_images:
                raise ValueError(f"seed must be between 0 and {MAX_SEED - lim.max_images}, got {seed}")
        return Request(prompt, negative_prompt, width, height, steps, scales[0], scales[1], sampler, seed,
                       randomize_seed, images)  # fmt: skip

    # --- generation ---------------------------------------------------------------------------------------------

    def generate(
        self, request: Request, progress: Callable[[int, int], Any] | None = None
    ) -> tuple[list[Path], dict[str, Any]]:
        """Generate the images of a checked request and write them as PNGs with their settings.

        The request's size is binned to the closest usable bucket (one whose sides are multiples of the
        autoencoder's compression), generated there, decoded, and resized and center-cropped back, as the
        pipeline's own resolution binning does.

        Args:
            request: what `check` returned.
            progress: called after every denoising step with (steps done, total steps).

        Returns:
            The PNG paths (one per image) and the settings (what the page shows: enough to reproduce the images).
        """
        import torch

        from sana.images import resize_and_crop, save_png, to_pil
        from sana.sampling import bin_size

        self._prune()
        r = request
        bucket_h, bucket_w = bin_size(r.height, r.width, self.buckets)
        steps = r.steps

        def on_step(i: int, t: Any, x: Any, x0: Any) -> None:
            if progress is not None:
                progress(i + 1, steps)

        started = time.perf_counter()
        latents = self.pipe(
            r.prompt, height=bucket_h, width=bucket_w, negative_prompt=r.negative_prompt, num_inference_steps=steps,
            guidance_scale=r.guidance_scale, pag_guidance_scale=r.pag_guidance_scale, num_images_per_prompt=r.images,
            seed=r.seed, sampler=r.sampler, use_resolution_binning=False, output_type="latent", callback=on_step,
            progress=False,
        )  # fmt: skip  # (B, C_z, h, w)
        with torch.no_grad():
            pixels = resize_and_crop(self.pipe.decode(latents), r.height, r.width).clamp(-1, 1)  # (B, 3, H, W)
        seconds = time.perf_counter() - started
        key = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
        folder = self.out_dir / key
        common = {
            "height": r.height, "width": r.width, "num_inference_steps": steps, "guidance_scale": r.guidance_scale,
            "pag_guidance_scale": r.pag_guidance_scale, "negative_prompt": r.negative_prompt, "sampler": r.sampler,
            "use_resolution_binning": True, "bucket": [bucket_h, bucket_w], "model": self.model or "embedded default",
            "generator": "sana app",
        }  # fmt: skip
        paths = []
        for j, image in enumerate(to_pil(pixels)):
            name = f"sana_{r.seed + j}.png"
            record = {"file": name, "prompt": r.prompt, "key": key, "index": j, "seed": r.seed + j, **common}
            paths.append(save_png(image, folder / name, record))
        settings = {
            "prompt": r.prompt, "negative_prompt": r.negative_prompt, "width": r.width, "height": r.height,
            "bucket": [bucket_h, bucket_w], "num_inference_steps": steps, "guidance_scale": r.guidance_scale,
            "pag_guidance_scale": r.pag_guidance_scale, "sampler": r.sampler, "seed": r.seed,
            "randomize_seed": r.randomize_seed, "images_per_prompt": r.images,
            "seeds": [r.seed + j for j in range(r.images)], "model": self.model or "embedded default",
            "seconds": round(seconds, 3), "command": self.command(r),
        }  # fmt: skip
        return paths, settings

    def command(self, r: Request) -> str:
        """The `sana generate` command that makes the same images.

        Args:
            r: a checked request.

        Returns:
            The command line.
        """
        words = ["sana", "generate", r.prompt]
        words += self.model_args
        words += ["--height", str(r.height), "--width", str(r.width), "--steps", str(r.steps),
                  "--cfg_scale", f"{r.guidance_scale:g}", "--pag_scale", f"{r.pag_guidance_scale:g}",
                  "--sampler", r.sampler, "--seed", str(r.seed), "--images_per_prompt", str(r.images)]  # fmt: skip
        if r.negative_prompt:
            words += ["--negative_prompt", r.negative_prompt]
        return shlex.join(words)

    def _prune(self) -> None:
        """Delete request folders older than `keep_seconds` (the disk stays bounded on a long-running server)."""
        cutoff = time.time() - self.keep_seconds
        with self._prune_lock:
            for folder in self.out_dir.iterdir():
                if folder.is_dir() and folder.stat().st_mtime < cutoff:
                    shutil.rmtree(folder, ignore_errors=True)


def _ratio(w: int, h: int) -> tuple[int, int]:
    g = math.gcd(w, h)
    return w // g, h // g


def _text(name: str, value: Any, limit: int) -> str:
    if not isinstance(value, str):
        raise ValueError(f"the {name} must be text, got {type(value).__name__}")
    if len(value) > limit:
        raise ValueError(f"the {name} has {len(value)} characters; this server takes at most {limit}")
    return value


def _whole(name: str, value: Any) -> int:
    """An int from an int or an integral float (sliders and JSON send floats); anything else is refused."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    return int(value)


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


# ------------------------------------------------------------------------------------------------------- gradio


def _import_gradio() -> Any:
    """Gradio with its analytics off (the environment variable must be set before the import)."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    try:
        import gradio
    except ImportError as err:
        raise RuntimeError(f"`sana app` needs Gradio: {INSTALL_HINT} ({err})") from None
    return gradio


def theme() -> Any:
    """The page theme: Gradio's default look with system fonts, so the page fetches no web fonts."""
    gr = _import_gradio()
    return gr.themes.Default(
        font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "Consolas", "monospace"]
    )


def build_app(
    pipe: Any,
    *,
    limits: Limits = Limits(),  # a frozen dataclass: an immutable default
    backend: AppBackend | None = None,
    title: str = "Sana",
) -> Any:
    """The demo page as a `gradio.Blocks` with its queue set up; launch it with `launch(app)` (or Gradio's own).

    Args:
        pipe: a loaded `sana.pipeline.SanaPipeline` (ignored when `backend` is given).
        limits: request bounds and queue settings (ignored when `backend` is given: its limits are used).
        backend: the `AppBackend` to use (default: one built from `pipe` and `limits`).
        title: the page title.

    Returns:
        The `gradio.Blocks` app; its generate endpoint is the API endpoint `/generate`.
    """
    gr = _import_gradio()
    backend = backend or AppBackend(pipe, limits)
    lim = backend.limits
    presets = backend.presets()
    height0, width0 = backend.default_size
    square = next(label for label, size in presets.items() if size == (height0, width0))
    custom = "custom (binned to the closest bucket)"

    def generate(
        prompt: str,
        negative_prompt: str,
        width: float,
        height: float,
        steps: float,
        guidance_scale: float,
        pag_guidance_scale: float,
        sampler: str,
        seed: float,
        randomize_seed: bool,
        images: float,
        progress: Any = gr.Progress(),  # noqa: B008 (Gradio's way to ask for a progress tracker)
    ) -> tuple[list[tuple[str, str]], list[str], dict[str, Any]]:
        """Generate images; every argument is checked on the server against its limits."""
        try:
            request = backend.check(prompt, negative_prompt, width, height, steps, guidance_scale,
                                    pag_guidance_scale, sampler, seed, randomize_seed, images)  # fmt: skip
        except ValueError as err:
            raise gr.Error(str(err), title="Request refused", print_exception=False) from None
        progress((0, request.steps), desc="denoising", unit="steps")
        try:
            paths, settings = backend.generate(
                request, progress=lambda done, total: progress((done, total), desc="denoising", unit="steps")
            )
        except Exception as err:  # any failure becomes a message in the page; the server goes on
            raise gr.Error(f"generation failed: {type(err).__name__}: {err}", title="Generation failed") from None
        gallery = [(str(p), f"seed {s}") for p, s in zip(paths, settings["seeds"])]
        return gallery, [str(p) for p in paths], settings

    def pick_preset(label: str) -> tuple[Any, Any]:
        if label not in presets:
            return gr.update(), gr.update()
        h, w = presets[label]
        return gr.update(value=w), gr.update(value=h)

    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(3600, 3600)) as app:
        gr.Markdown(
            f"# {title}\nModel: `{backend.model or 'embedded default'}` · up to {lim.max_pixels:,} pixels, "
            f"{lim.max_steps} steps and {lim.max_images} images per request · requests run {lim.concurrency} at a "
            "time, the rest wait in the queue."
        )
        with gr.Row():
            with gr.Column(scale=1):
                prompt = gr.Textbox(label="Prompt", lines=2, placeholder="a red circle to the left of a blue square",
                                    elem_id="prompt")  # fmt: skip
                negative = gr.Textbox(label="Negative prompt", lines=1, elem_id="negative_prompt")
                run = gr.Button("Generate", variant="primary", elem_id="generate")
                ratio = gr.Dropdown([*presets, custom], value=square, label="Aspect ratio (bucket table)",
                                    elem_id="aspect_ratio")  # fmt: skip
                with gr.Row():
                    width = gr.Slider(MIN_SIDE, backend.max_side, value=width0, step=8, label="Width",
                                      elem_id="width")  # fmt: skip
                    height = gr.Slider(MIN_SIDE, backend.max_side, value=height0, step=8, label="Height",
                                       elem_id="height")  # fmt: skip
                steps = gr.Slider(1, lim.max_steps, value=backend.default_steps, step=1, label="Steps", elem_id="steps")
                with gr.Row():
                    cfg = gr.Slider(0, MAX_GUIDANCE, value=4.5, step=0.1, label="CFG scale", elem_id="cfg_scale")
                    pag = gr.Slider(0, MAX_GUIDANCE, value=1.0, step=0.1, label="PAG scale (> 1: on)",
                                    elem_id="pag_scale")  # fmt: skip
                sampler = gr.Dropdown(list(backend.samplers), value=backend.default_sampler, label="Sampler",
                                      elem_id="sampler")  # fmt: skip
                with gr.Row():
                    seed = gr.Number(0, label="Seed", precision=0, minimum=0, maximum=MAX_SEED - lim.max_images,
                                     elem_id="seed")  # fmt: skip
                    randomize = gr.Checkbox(True, label="Randomize seed", elem_id="randomize_seed")
                images = gr.Slider(1, lim.max_images, value=1, step=1, label="Images per prompt", elem_id="images")
            with gr.Column(scale=1):
                gallery = gr.Gallery(label="Images", columns=2, elem_id="gallery")
                files = gr.File(label="PNG files (generation settings embedded)", file_count="multiple",
                                elem_id="downloads")  # fmt: skip
                settings = gr.JSON(label="Settings (to reproduce the images)", elem_id="settings")
        ratio.change(pick_preset, [ratio], [width, height], api_visibility="private", queue=False)
        width.input(lambda: custom, None, [ratio], api_visibility="private", queue=False)
        height.input(lambda: custom, None, [ratio], api_visibility="private", queue=False)
        inputs = [prompt, negative, width, height, steps, cfg, pag, sampler, seed, randomize, images]
        outputs = [gallery, files, settings]
        # preprocess=False: the raw values reach `AppBackend.check`, whose messages name the field and the bound
        # (Gradio's own slider check would refuse out-of-range values with a bare "Value 4096 is greater than 1024").
        run.click(generate, inputs, outputs, api_name=API_NAME, preprocess=False)
        prompt.submit(generate, inputs, outputs, api_visibility="private", preprocess=False)
    app.queue(default_concurrency_limit=lim.concurrency, max_size=lim.queue_size)
    app.sana_backend = backend  # type: ignore[attr-defined]
    return app


def launch(app: Any, *, host: str = "127.0.0.1", port: int = DEFAULT_PORT, block: bool = True) -> Any:
    """Serve `app` (from `build_app`) locally: no share link, analytics off, errors shown in the page.

    Args:
        app: the `gradio.Blocks` from `build_app`.
        host: the address to listen on ("0.0.0.0" to serve the network).
        port: the TCP port.
        block: keep serving until interrupted (False: return once the server is up, e.g. in tests).

    Returns:
        What `gradio.Blocks.launch` returns (the FastAPI app, the local URL, the share URL).
    """
    backend = app.sana_backend
    return app.launch(
        server_name=host, server_port=port, share=False, show_error=True, prevent_thread_lock=not block,
        allowed_paths=[str(backend.out_dir)], ssr_mode=False, pwa=False, mcp_server=False, quiet=not block,
        theme=theme(), footer_links=["api", "settings"],
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------------------- CLI


def default_port() -> int:
    """`DEMO_PORT` from the environment (as the official demo), else 15432.

    Raises:
        ValueError: `DEMO_PORT` is set but is not a port number.
    """
    text = os.environ.get("DEMO_PORT", "").strip()
    if not text:
        return DEFAULT_PORT
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"DEMO_PORT must be a port number (1-65535), got {text!r}")
    return int(text)


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Register the `app` subcommand on the `sana` command's subparsers (needs no Gradio until it runs).

    Args:
        sub: the subparsers action of the `sana` parser.

    Returns:
        The `app` parser.
    """
    defaults = Limits()
    app = sub.add_parser("app", help="the demo web app (Gradio; needs sana[app])")
    app.add_argument("--config", help="a Sana YAML (with --model_path to a transformer checkpoint)")
    app.add_argument("--model_path", help="a pipeline folder / repo, or a checkpoint with --config (default: embedded)")
    app.add_argument("--port", type=int, help=f"TCP port (default: $DEMO_PORT, else {DEFAULT_PORT})")
    app.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0: network)")
    app.add_argument("--device", help="where the model runs (default: cuda if available, else cpu)")
    app.add_argument("--max-pixels", type=int, help="largest width x height per image (default: (2 x image_size)^2)")
    app.add_argument("--max-steps", type=int, default=defaults.max_steps, help="most steps per request")
    app.add_argument("--max-images", type=int, default=defaults.max_images, help="most images per request")
    app.add_argument("--concurrency", type=int, default=defaults.concurrency, help="requests generated at once")
    app.add_argument("--queue-size", type=int, default=defaults.queue_size, help="most requests waiting")
    app.set_defaults(run=run_app)
    return app


def run_app(args: argparse.Namespace, overrides: Mapping[str, Any] | None = None) -> int:
    """`sana app`: load the model, build the page and serve it until interrupted.

    Args:
        args: the parsed `sana app` arguments.
        overrides: dotted config overrides from the command line.

    Returns:
        The exit status.
    """
    import torch

    from sana.cli import _model_path, load_pipeline
    from sana.config import load_config

    _import_gradio()  # fail before loading the model when the extra is missing
    port = args.port if args.port is not None else default_port()
    if not 0 < port < 65536:
        raise ValueError(f"--port must be a port number (1-65535), got {port}")
    overrides = dict(overrides or {})
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipe = load_pipeline(load_config(args.config, overrides), _model_path(args), overrides, device=device, dtype=None)
    size = int(pipe.config.model.image_size)
    limits = Limits(max_pixels=args.max_pixels or (2 * size) ** 2, max_steps=args.max_steps,
                    max_images=args.max_images, concurrency=args.concurrency, queue_size=args.queue_size)  # fmt: skip
    model_args = [*(["--config", args.config] if args.config else []),
                  *(["--model_path", args.model_path] if args.model_path else []),
                  *(f"--{key}={_override_text(value)}" for key, value in overrides.items())]  # fmt: skip
    backend = AppBackend(pipe, limits, model=args.model_path or args.config, model_args=model_args)
    app = build_app(pipe, backend=backend)
    print(f"sana app: serving on http://{args.host}:{port} (Ctrl+C to stop)", flush=True)
    launch(app, host=args.host, port=port, block=True)
    return 0


def _override_text(value: Any) -> str:
    """A dotted override's value as it is written on the command line (YAML flow syntax for lists and dicts)."""
    return value if isinstance(value, str) else json.dumps(value)


__all__ = ("AppBackend", "Limits", "Request", "add_parser", "build_app", "launch", "run_app")
