"""Offscreen MuJoCo rendering of one fixed camera, with quality presets and safe GL clean-up.

Why not Gymnasium's `MujocoRenderer`: its quality settings cannot be changed before its GL context is made;
its `render()` does not make its own context current; and its `close()` frees the GL context but leaves
MuJoCo's render context (`MjrContext`) to the garbage collector, which frees GL objects in whatever context
is current. Together: an env that outlives a closed neighbour renders black (reproduced on this machine).
`OffscreenRenderer` makes its context current for every frame, and `close()` frees the `MjrContext` inside
its own context, then the context. With the `paper` preset its frames are bit-identical to Gymnasium's
(tested).

Presets (64x64 `corner` camera, one render per agent step; `python experiments/bench_env.py`, 2 shared CPU
cores, EGL, load average 3-6):

| preset   | shadows           | multisampling | reflections | agent steps/s | look vs `paper`            |
|----------|-------------------|---------------|-------------|---------------|----------------------------|
| `paper`  | Meta-World's 4096 | 4x            | on          | 9-14          | identical (Meta-World's)   |
| `medium` | 1024              | off           | on          | 29-45         | mean abs pixel diff ~3/255 |
| `fast`   | off               | off           | off         | 135-215       | mean abs pixel diff ~5/255 |
"""

from __future__ import annotations

import atexit
import os
import weakref
from dataclasses import dataclass

import mujoco
import numpy as np
from mujoco import gl_context


@dataclass(frozen=True)
class RenderSettings:
    """MuJoCo visual quality knobs. `None` keeps the model's own value (Meta-World's look)."""

    shadow_size: int | None = None  # shadow map texture size; read when the render context is made
    offscreen_samples: int | None = None  # multisampling of the offscreen buffer; read at context creation
    shadows: bool = True
    reflections: bool = True


RENDER_PRESETS: dict[str, RenderSettings] = {
    "paper": RenderSettings(),
    "medium": RenderSettings(shadow_size=1024, offscreen_samples=0),
    # A zero-size shadow map skips allocating the (unused) 4096^2 shadow texture.
    "fast": RenderSettings(shadow_size=0, offscreen_samples=0, shadows=False, reflections=False),
}


_live_renderers: weakref.WeakSet[OffscreenRenderer] = weakref.WeakSet()
_exit_hook_registered = False


def _close_live_renderers() -> None:
    for renderer in list(_live_renderers):
        renderer.close()


def _track(renderer: OffscreenRenderer) -> None:
    """Close renderers still open at exit *before* MuJoCo's EGL module terminates the display (its exit hook
    is registered when the first context is made; exit hooks run last-in first-out), which would otherwise
    make every late clean-up print an EGL error."""
    global _exit_hook_registered
    _live_renderers.add(renderer)
    if not _exit_hook_registered:
        atexit.register(_close_live_renderers)
        _exit_hook_registered = True


def render_settings(quality: str) -> RenderSettings:
    """The preset named `quality` (`fast`, `medium` or `paper`)."""
    if quality not in RENDER_PRESETS:
        raise ValueError(f"unknown render_quality {quality!r}; choose one of {sorted(RENDER_PRESETS)}")
    return RENDER_PRESETS[quality]


class OffscreenRenderer:
    """Renders `camera` of a MuJoCo model to uint8 RGB `(H, W, 3)` images, top row first.

    The model's quality settings are changed in place (before the context is made, where MuJoCo reads them),
    so give each renderer its own model - one per env.
    """

    def __init__(
        self,
        model: mujoco.MjModel,
        data: mujoco.MjData,
        camera: str,
        width: int,
        height: int,
        settings: RenderSettings,
    ) -> None:
        camera_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
        if camera_id < 0:
            names = [mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_CAMERA, i) for i in range(model.ncam)]
            raise ValueError(f"unknown camera {camera!r}; this model has {names}")
        if settings.shadow_size is not None:
            model.vis.quality.shadowsize = settings.shadow_size
        if settings.offscreen_samples is not None:
            model.vis.quality.offsamples = settings.offscreen_samples
        # The offscreen framebuffer must hold the image (Meta-World's is 640x480).
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, width)
        model.vis.global_.offheight = max(model.vis.global_.offheight, height)

        self._model, self._data = model, data
        self._gl: gl_context.GLContext | None = None
        self._context: mujoco.MjrContext | None = None
        if gl_context.GLContext is None:
            raise RuntimeError(
                f"MUJOCO_GL={os.environ.get('MUJOCO_GL')!r} disables rendering; use egl or osmesa"
            )
        self._gl = gl_context.GLContext(width, height)
        _track(self)
        self._gl.make_current()
        try:
            self._context = mujoco.MjrContext(model, mujoco.mjtFontScale.mjFONTSCALE_150)
        except mujoco.FatalError as error:
            self.close()
            raise RuntimeError(
                f"no usable OpenGL context ({error}); render headless with MUJOCO_GL=egl (or osmesa), "
                "set before MuJoCo is first imported"
            ) from error
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, self._context)

        # Same scene size as Gymnasium's renderer, so that `paper` frames match it exactly.
        self._scene = mujoco.MjvScene(model, maxgeom=1000)
        self._scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = settings.shadows
        self._scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = settings.reflections
        self._option = mujoco.MjvOption()
        self._perturb = mujoco.MjvPerturb()
        self._camera = mujoco.MjvCamera()
        self._camera.type = mujoco.mjtCamera.mjCAMERA_FIXED
        self._camera.fixedcamid = camera_id
        self._viewport = mujoco.MjrRect(0, 0, width, height)
        self._pixels = np.empty((height, width, 3), dtype=np.uint8)

    def render(self) -> np.ndarray:
        """The current state of `data` seen from the camera: a new uint8 `(H, W, 3)` array, top row first."""
        if self._gl is None or self._context is None:
            raise RuntimeError("render() called after close(); make a new env")
        # Another renderer (e.g. the eval env's) may have made its context current since our last call.
        self._gl.make_current()
        mujoco.mjv_updateScene(
            self._model,
            self._data,
            self._option,
            self._perturb,
            self._camera,
            mujoco.mjtCatBit.mjCAT_ALL,
            self._scene,
        )
        mujoco.mjr_render(self._viewport, self._scene, self._context)
        mujoco.mjr_readPixels(self._pixels, None, self._viewport, self._context)
        # OpenGL reads the bottom row first.
        return self._pixels[::-1].copy()

    def close(self) -> None:
        """Free the GL objects inside our own context, then the context itself. Safe to call twice."""
        if self._gl is None:
            return
        self._gl.make_current()
        if self._context is not None:
            self._context.free()
            self._context = None
        self._gl.free()
        self._gl = None

    def __del__(self) -> None:
        # An env dropped without close(): still free inside our own context, never in a neighbour's.
        if getattr(self, "_gl", None) is not None:
            self.close()
