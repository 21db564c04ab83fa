"""The default kernel image: its recipe (as data, hashed into the tag) and its builder.

The image is built without any container registry (debootstrap, a chroot and `docker import`);
`Dockerfile` next to this module builds the same content from `debian:bookworm-slim` where a
registry is reachable. Sessions and the image allowlist default to `image_tag()`.
"""

from .builder import ImageBuildError, build_image, cache_dir, import_changes, main
from .recipe import (
    BUILDER_VERSION,
    CONNECTION_FILE,
    DEFAULT_RECIPE,
    IMAGE_REPOSITORY,
    JUPYTER_SERVICE,
    LABEL_KERNELSPEC,
    LABEL_RECIPE,
    LABEL_SERVICES,
    Recipe,
    Service,
    image_labels,
    image_tag,
    recipe_hash,
    services_json,
)

__all__ = [
    "BUILDER_VERSION",
    "CONNECTION_FILE",
    "DEFAULT_RECIPE",
    "IMAGE_REPOSITORY",
    "JUPYTER_SERVICE",
    "LABEL_KERNELSPEC",
    "LABEL_RECIPE",
    "LABEL_SERVICES",
    "ImageBuildError",
    "Recipe",
    "Service",
    "build_image",
    "cache_dir",
    "image_labels",
    "image_tag",
    "import_changes",
    "main",
    "recipe_hash",
    "services_json",
]
