"""The core ComfyUI nodes our workflows use: real input specs and minimal real implementations.

INPUT_TYPES, RETURN_TYPES, OUTPUT_NODE, FUNCTION and CATEGORY are copied from ComfyUI 0.3.75
(rattus128/ComfyUI@9d8a817, nodes.py: SaveImage, PreviewImage, LoadImage, LatentUpscaleBy). The FUNCTION
bodies follow ComfyUI's behaviour closely enough for the workflow tests: LoadImage reads a file from the input
directory into IMAGE [1, H, W, 3] float32 0..1 plus a MASK; SaveImage writes <prefix>_<counter:05>_.png
(truncating 255*v like ComfyUI) with the prompt/workflow text chunks; PreviewImage writes to the temp dir.

KSampler, EmptySD3LatentImage and VAEDecode (the native MODEL/VAE path) are specs only: their bodies are ComfyUI's
samplers and VAEs, which these tests do not reimplement. They carry NEEDS_COMFYUI (the reason); the workflow tests
check them like every node and run the rest of the graph, and tests/comfyui/native runs them in a real ComfyUI.

A workflow that uses any other core node fails the tests until its real spec is added here.
"""

from __future__ import annotations

import hashlib
import json
import os
import random

import numpy as np
import torch
from PIL import Image, ImageOps
from PIL.PngImagePlugin import PngInfo

COMFYUI_VERSION = "0.3.75"
# folder_paths.get_input_directory() / get_output_directory() / get_temp_directory(); set by the test fixture
DIRS = {"input": "", "output": "", "temp": ""}


def _input_files() -> list[str]:
    folder = DIRS["input"]
    if not folder or not os.path.isdir(folder):
        return []
    exts = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
    return sorted(f for f in os.listdir(folder) if os.path.isfile(os.path.join(folder, f)) and f.lower().endswith(exts))


def _save_path(prefix: str, output_dir: str):
    """folder_paths.get_save_image_path without the %date% variables."""
    subfolder = os.path.dirname(os.path.normpath(prefix))
    filename = os.path.basename(os.path.normpath(prefix))
    folder = os.path.join(output_dir, subfolder)
    if os.path.commonpath((output_dir, os.path.abspath(folder))) != output_dir:
        raise Exception("Saving image outside the output folder is not allowed.")
    os.makedirs(folder, exist_ok=True)
    counters = []
    for name in os.listdir(folder):
        head = name[: len(filename) + 1]
        if head[:-1] == filename and head[-1:] == "_":
            try:
                counters.append(int(name[len(filename) + 1 :].split("_")[0]))
            except ValueError:
                counters.append(0)
    return folder, filename, (max(counters) + 1 if counters else 1), subfolder


class SaveImage:
    def __init__(self):
        self.output_dir = DIRS["output"]
        self.type = "output"
        self.prefix_append = ""
        self.compress_level = 4

    @classmethod
    def INPUT_TYPES(s):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "The images to save."}),
                "filename_prefix": (
                    "STRING",
                    {
                        "default": "ComfyUI",
                        "tooltip": "The prefix for the file to save. This may include formatting information such as %date:yyyy-MM-dd% or %Empty Latent Image.width% to include values from nodes.",
                    },
                ),
            },
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        }

    RETURN_TYPES = ()
    FUNCTION = "save_images"
    OUTPUT_NODE = True
    CATEGORY = "image"
    DESCRIPTION = "Saves the input images to your ComfyUI output directory."

    def save_images(self, images, filename_prefix="ComfyUI", prompt=None, extra_pnginfo=None):
        filename_prefix += self.prefix_append
        folder, filename, counter, subfolder = _save_path(filename_prefix, self.output_dir)
        results = []
        for batch_number, image in enumerate(images):
            i = 255.0 * image.cpu().numpy()
            img = Image.fromarray(np.clip(i, 0, 255).astype(np.uint8))
            metadata = PngInfo()
            if prompt is not None:
                metadata.add_text("prompt", json.dumps(prompt))
            if extra_pnginfo is not None:
                for x in extra_pnginfo:
                    metadata.add_text(x, json.dumps(extra_pnginfo[x]))
            file = f"{filename.replace('%batch_num%', str(batch_number))}_{counter:05}_.png"
            img.save(os.path.join(folder, file), pnginfo=metadata, compress_level=self.compress_level)
            results.append({"filename": file, "subfolder": subfolder, "type": self.type})
            counter += 1
        return {"ui": {"images": results}}


class PreviewImage(SaveImage):
    def __init__(self):
        self.output_dir = DIRS["temp"]
        self.type = "temp"
        self.prefix_append = "_temp_" + "".join(random.choice("abcdefghijklmnopqrstupvxyz") for _ in range(5))
        self.compress_level = 1

    @classmethod
    def INPUT_TYPES(s):
        return {"required": {"images": ("IMAGE",)}, "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}


class LoadImage:
    @classmethod
    def INPUT_TYPES(s):
        return {"required": {"image": (_input_files(), {"image_upload": True})}}

    CATEGORY = "image"
    RETURN_TYPES = ("IMAGE", "MASK")
    FUNCTION = "load_image"

    def load_image(self, image):
        path = os.path.join(DIRS["input"], image)
        i = ImageOps.exif_transpose(Image.open(path))
        rgb = torch.from_numpy(np.array(i.convert("RGB")).astype(np.float32) / 255.0)[None]
        if "A" in i.getbands():
            mask = 1.0 - torch.from_numpy(np.array(i.getchannel("A")).astype(np.float32) / 255.0)
        else:
            mask = torch.zeros((64, 64), dtype=torch.float32)
        return rgb, mask.unsqueeze(0)

    @classmethod
    def IS_CHANGED(s, image):
        with open(os.path.join(DIRS["input"], image), "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()

    @classmethod
    def VALIDATE_INPUTS(s, image):
        if not os.path.isfile(os.path.join(DIRS["input"], image)):
            return f"Invalid image file: {image}"
        return True


class LatentUpscaleBy:
    upscale_methods = ["nearest-exact", "bilinear", "area", "bicubic", "bislerp"]

    @classmethod
    def INPUT_TYPES(s):
        return {
            "required": {
                "samples": ("LATENT",),
                "upscale_method": (s.upscale_methods,),
                "scale_by": ("FLOAT", {"default": 1.5, "min": 0.01, "max": 8.0, "step": 0.01}),
            }
        }

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "upscale"
    CATEGORY = "latent"

    def upscale(self, samples, upscale_method, scale_by):
        if upscale_method == "bislerp":
            raise NotImplementedError("bislerp is not reimplemented in the test harness")
        s = samples.copy()
        width = round(samples["samples"].shape[-1] * scale_by)
        height = round(samples["samples"].shape[-2] * scale_by)
        s["samples"] = torch.nn.functional.interpolate(samples["samples"], size=(height, width), mode=upscale_method)
        return (s,)


NATIVE_REASON = "ComfyUI's own sampler/VAE code; tests/comfyui/native runs it in a real ComfyUI"


class _SpecOnly:
    NEEDS_COMFYUI = NATIVE_REASON

    def run(self, **_):
        raise RuntimeError(f"{type(self).__name__} is a spec only here: {NATIVE_REASON}")


class KSampler(_SpecOnly):
    SAMPLERS = ["euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2", "dpm_2"]
    SAMPLERS += [
        "dpm_2_ancestral",
        "lms",
        "dpm_fast",
        "dpm_adaptive",
        "dpmpp_2s_ancestral",
        "dpmpp_2s_ancestral_cfg_pp",
    ]
    SAMPLERS += ["dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu"]
    SAMPLERS += ["dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm"]
    SAMPLERS += ["ipndm", "ipndm_v", "deis", "res_multistep", "res_multistep_cfg_pp", "res_multistep_ancestral"]
    SAMPLERS += ["res_multistep_ancestral_cfg_pp", "gradient_estimation", "gradient_estimation_cfg_pp", "er_sde"]
    SAMPLERS += ["seeds_2", "seeds_3", "sa_solver", "sa_solver_pece", "ddim", "uni_pc", "uni_pc_bh2"]
    SCHEDULERS = ["simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal"]
    SCHEDULERS += ["linear_quadratic", "kl_optimal"]

    @classmethod
    def INPUT_TYPES(s):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The model used for denoising the input latent."}),
                "seed": (
                    "INT",
                    {
                        "default": 0,
                        "min": 0,
                        "max": 0xFFFFFFFFFFFFFFFF,
                        "control_after_generate": True,
                        "tooltip": "The random seed used for creating the noise.",
                    },
                ),
                "steps": ("INT", {"default": 20, "min": 1, "max": 10000}),
                "cfg": ("FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}),
                "sampler_name": (s.SAMPLERS,),
                "scheduler": (s.SCHEDULERS,),
                "positive": ("CONDITIONING",),
                "negative": ("CONDITIONING",),
                "latent_image": ("LATENT",),
                "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}),
            }
        }

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "run"
    CATEGORY = "sampling"


class EmptySD3LatentImage(_SpecOnly):
    @classmethod
    def INPUT_TYPES(s):
        return {
            "required": {
                "width": ("INT", {"default": 1024, "min": 16, "max": 16384, "step": 16}),
                "height": ("INT", {"default": 1024, "min": 16, "max": 16384, "step": 16}),
                "batch_size": ("INT", {"default": 1, "min": 1, "max": 4096}),
            }
        }

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "run"
    CATEGORY = "latent/sd3"


class VAEDecode(_SpecOnly):
    @classmethod
    def INPUT_TYPES(s):
        return {"required": {"samples": ("LATENT",), "vae": ("VAE",)}}

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"
    CATEGORY = "latent"


CORE_NODES = {
    "KSampler": KSampler,
    "EmptySD3LatentImage": EmptySD3LatentImage,
    "VAEDecode": VAEDecode,
    "SaveImage": SaveImage,
    "PreviewImage": PreviewImage,
    "LoadImage": LoadImage,
    "LatentUpscaleBy": LatentUpscaleBy,
}
# Extra widgets_values the front end appends that are not inputs (the image-upload button's value).
UI_EXTRA_WIDGET_VALUES = {"LoadImage": ["image"]}
