"""Model weights: the cache in TotalSegmentator's layout, release archives, downloads and the licence key.

- :mod:`.cache`: where each model lives, what is missing, fetching it;
- :mod:`.archive`: unpacking, checking and installing dataset folders (downloads and imports alike);
- :mod:`.transfer`: the HTTP side of downloads and licence checks;
- :mod:`.licensing`: the licence key in the official ``config.json``;
- :mod:`.paths`: the home folder and its files, identical to the official package's layout.
"""

from .archive import CHECKPOINT, ImportReport, import_weights
from .cache import dataset_dir, download_dataset, download_task, ensure_weights, is_installed, missing_models, model_dir
from .licensing import get_license_key, require_license_key, set_license_key
from .paths import config_file, home_dir, weights_dir

__all__ = ["CHECKPOINT", "ImportReport", "config_file", "dataset_dir", "download_dataset", "download_task",
           "ensure_weights", "get_license_key", "home_dir", "import_weights", "is_installed", "missing_models",
           "model_dir", "require_license_key", "set_license_key", "weights_dir"]
