"""The four hosted models, transcribed from /work/shared/runcomfy-api/*.txt.

Every enum, bound, default and `validations` message is verbatim from the page (the edit page's
string values "0.33" and "3" become numbers). Where a page contradicts itself, `message_rule`
and `message_value` record what the message says, so preflight can warn instead of block.
Adding a model is one `define_model(...)` entry below, reusing the shared fields where they match.
"""

from __future__ import annotations

from types import MappingProxyType

from rcbatch.runcomfy.catalogue.spec import FieldSpec, ImageRule, ModelSpec, OutputKind, SoftLimit

JPEG_PNG = ("JPEG", "PNG")

DREAMINA_SIZES = (
    "1024x1024(1:1)", "2048x2048(1:1)", "2304x1728(4:3)", "2496x1664(3:2)", "2560x1440(16:9)",
    "3024x1296(21:9)", "4096x4096(1:1)", "4694x3520(4:3)", "4992x3328(3:2)", "5404x3040(16:9)",
    "6198x2656(21:9)",
)
SEEDREAM_RESOLUTIONS = (
    "2K", "4K", "2048x2048 (1:1)", "2304x1728 (4:3)", "1728x2304 (3:4)", "2560x1440 (16:9)",
    "1440x2560 (9:16)", "2496x1664 (3:2)", "1664x2496 (2:3)", "3024x1296 (21:9)",
    "4096x4096 (1:1)",
)

_SCALE_DOC = ("Controls how strongly the text prompt influences the result relative to input "
              "images. Higher values increase text influence.")
_FORCE_SINGLE_DOC = ("Whether to force generation of a single image. More images per set "
                     "increase latency; for stability, specify group count/resolution or pass "
                     "width and height.")

# -- fields shared by the two Dreamina 4.0 endpoints -------------------------------------------
WIDTH_X_HEIGHT = FieldSpec("width×height", "string", default="2048x2048(1:1)",
                           enum=DREAMINA_SIZES, title="Aspect Ratio (W:H)")
SCALE = FieldSpec("scale", "number", default=0.5, minimum=0, maximum=1, description=_SCALE_DOC,
                  title="Scale")
FORCE_SINGLE = FieldSpec("force_single", "boolean", default=False,
                         description=_FORCE_SINGLE_DOC, title="Force Single Image")

_4K = "Maximum resolution is 4096x4096."
_EDIT_RATIO = "The input image aspect ratio must be within [1/3, 3]."
_EDIT_IMAGES = FieldSpec(
    "image_urls", "array", required=True, min_items=1, max_items=10, item_format="image_uri",
    title="Images", image_formats=JPEG_PNG,
    default=("https://playgrounds-storage-public.runcomfy.net/tools/7002/media-files/"
             "usecase5-1-1-input.jpg",
             "https://playgrounds-storage-public.runcomfy.net/tools/7002/media-files/"
             "usecase5-1-2-input.jpg"),
    description=("Only JPEG and PNG formats are supported; JPEG is recommended. Supports 1–10 "
                 "images; larger or more images increase processing time. Recommended to use "
                 "no more than 6 images; too many reference images may reduce quality."),
    image_rules=(
        ImageRule("file_size_mb<=", 15, "Each image file must be ≤ 15 MB."),
        ImageRule("width_pixels<=", 4096, _4K),
        ImageRule("height_pixels<=", 4096, _4K),
        # the value says 0.33, the message says 1/3: [0.33, 1/3) only warns
        ImageRule("width/height≥", 0.33, _EDIT_RATIO, "width/height≥", 1 / 3),
        ImageRule("width/height≤", 3, _EDIT_RATIO),
    ),
)

# -- Dreamina 3.0 image-to-video ---------------------------------------------------------------
_I2V_4K = "Maximum resolution is 4096×4096."
_I2V_IMAGES = FieldSpec(
    "image_urls", "array", required=True, min_items=1, max_items=1, item_format="image_uri",
    title="Image", description="Upload JPEG/PNG format", image_formats=JPEG_PNG,
    default=("https://playgrounds-storage-public.runcomfy.net/tools/7002/media-files/"
             "usecase5-1-1-input.jpg",),
    image_rules=(
        ImageRule("file_size_mb<", 4.7, "File size must be less than 4.7 MB."),
        ImageRule("width_pixels<=", 4096, _I2V_4K),
        ImageRule("height_pixels<=", 4096, _I2V_4K),
        ImageRule("shortest_side_pixels>=", 320, "The shortest side must be at least 320 px."),
        ImageRule("width/height<=", 3, "The long-to-short side ratio must be within 3:1."),
        ImageRule("width/height>", 0.33,
                  "The long-to-short side ratio must be greater than 0.33."),
    ),
)
_I2V_PROMPT_DOC = "The prompt should be less than 800 characters."
_I2V_PROMPT = FieldSpec(
    "prompt", "string", required=True, title="Prompt", description=_I2V_PROMPT_DOC,
    default="the woman is standing beside the boats, her feet soaked in water",
    soft_limits=(SoftLimit("length<", 800, _I2V_PROMPT_DOC),),
)

# -- Seedream 4.5 edit-sequential --------------------------------------------------------------
_SEEDREAM_RATIO = "The aspect ratio range should be 1:16 to 16:1."
_SEEDREAM_MIN = "The uploaded image width and height must exceed 14 pixels."
_SEEDREAM_MAX = "The uploaded image width and height must not exceed 6000 pixels."
_SEEDREAM_IMAGES = FieldSpec(
    "images", "array", required=True, min_items=1, max_items=14, item_format="image_uri",
    title="Images", description="Upload 1~14 images, must be jpeg or png", image_formats=JPEG_PNG,
    default=tuple(f"https://playgrounds-storage-public.runcomfy.net/tools/7250/media-files/"
                  f"input-1-{n}.png" for n in (1, 2, 3)),
    image_rules=(
        ImageRule("file_size_mb<", 10, "File size must be less than 10 MB."),
        # the value says 0.625 (5:8), the message 1:16: an aspect in (1/16, 0.625] only warns
        ImageRule("width/height>", 0.625, _SEEDREAM_RATIO, "width/height>", 1 / 16),
        ImageRule("width/height<", 16, _SEEDREAM_RATIO),
        ImageRule("width_pixels>", 14, _SEEDREAM_MIN),
        ImageRule("height_pixels>", 14, _SEEDREAM_MIN),
        # "<6000" versus "must not exceed 6000": exactly 6000 only warns
        ImageRule("width_pixels<", 6000, _SEEDREAM_MAX, "width_pixels<=", 6000),
        ImageRule("height_pixels<", 6000, _SEEDREAM_MAX, "height_pixels<=", 6000),
    ),
)
_SEEDREAM_PROMPT_DOC = (
    "The prompt should be less than 600 characters. Your prompt needs to contain the number of "
    "images you want to generate. Example: 'Generate 3 images of a beautiful sunset over a "
    "calm ocean.'")
_SEEDREAM_PROMPT = FieldSpec(
    "prompt", "string", required=True, title="Prompt", description=_SEEDREAM_PROMPT_DOC,
    default="The man is riding a motor cycle on the road",
    soft_limits=(
        SoftLimit("length<", 600, "The prompt should be less than 600 characters."),
        SoftLimit("mentions_number", None, "Your prompt needs to contain the number of images "
                  "you want to generate. Example: 'Generate 3 images of a beautiful sunset "
                  "over a calm ocean.'"),
    ),
)
_SEEDREAM_RESOLUTION_DOC = (
    "For 2K and 4K options, it will let the model determine the width and height. you should "
    "describe its aspect ratio, shape, or purpose in the prompt using natural language. For "
    "other options, you can choose the width and height you want.")
_SEEDREAM_OPTIONS_DOC = (
    "Sets the maximum number of images to generate. The actual number of images that can be "
    "generated also depends on the number of reference images provided. ")


def define_model(model_id: str, output_kind: OutputKind, *fields: FieldSpec,
           title: str = "") -> ModelSpec:
    """A ModelSpec whose image field and seed flag are read off its fields."""
    by_name = MappingProxyType({f.name: f for f in fields})
    image_fields = [f.name for f in fields if f.item_format == "image_uri"]
    return ModelSpec(model_id=model_id, fields=by_name, output_kind=output_kind,
                     image_field=image_fields[0] if image_fields else None,
                     has_seed="seed" in by_name, title=title)


_TABLE = (
    define_model(
        "bytedance/dreamina-4-0/text-to-image", "image",
        FieldSpec("prompt", "string", required=True, max_length=800, title="Prompt",
                  default="A beautiful girl is walking on the street"),
        WIDTH_X_HEIGHT, SCALE, FORCE_SINGLE,
        title="Dreamina 4.0 text-to-image",
    ),
    define_model(
        "bytedance/dreamina-4-0/edit", "image",
        _EDIT_IMAGES,
        FieldSpec("prompt", "string", required=True, max_length=800, title="prompt",
                  default="A beautiful girl is sitting on the boat"),
        WIDTH_X_HEIGHT, SCALE, FORCE_SINGLE,
        title="Dreamina 4.0 edit",
    ),
    define_model(
        "bytedance/dreamina-3-0/image-to-video", "video",
        _I2V_IMAGES, _I2V_PROMPT,
        FieldSpec("number_of_frames", "integer", default=121, enum=(121, 241),
                  title="Number of Frames",
                  description=("Total frames of the generated video. Supported values: 121 "
                               "(≈5s) and 241 (≈10s).")),
        FieldSpec("resolution", "string", default="720P", enum=("720P", "1080P"),
                  title="Resolution"),
        FieldSpec("seed", "integer", default=-1, title="Seed"),
        title="Dreamina 3.0 image-to-video",
    ),
    define_model(
        "bytedance/seedream-4-5/edit-sequential", "image",
        _SEEDREAM_IMAGES, _SEEDREAM_PROMPT,
        FieldSpec("resolution", "string", default="2048x2048 (1:1)", enum=SEEDREAM_RESOLUTIONS,
                  title="Resolution", description=_SEEDREAM_RESOLUTION_DOC),
        FieldSpec("seed", "integer", default=54519385, title="Seed"),
        FieldSpec("sequential_image_generation_options", "integer", required=True, default=3,
                  enum=tuple(range(1, 16)), title="Maximum Number of Generated Images",
                  description=_SEEDREAM_OPTIONS_DOC),
        title="Seedream 4.5 edit-sequential",
    ),
)

#: every supported model by its endpoint id (the path after /v1/models/)
MODELS: MappingProxyType[str, ModelSpec] = MappingProxyType({m.model_id: m for m in _TABLE})
