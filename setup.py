"""Only here to ship ``nnunet_swin_ext_trainer.pth`` at the root of site-packages (metadata lives in
pyproject.toml). The .pth line registers the trainers with nnU-Net at interpreter start; see
``nnunet_swin/registration.py``. Editable installs (``pip install -e .``) get it too, naming the source
tree's trainer directory.
"""

import importlib.util
import os

from setuptools import setup
from setuptools.command.build_py import build_py

_HERE = os.path.dirname(os.path.abspath(__file__))
# registration.py imports only the standard library at module level, so it loads without torch.
_spec = importlib.util.spec_from_file_location("_nnunet_swin_registration",
                                               os.path.join(_HERE, "nnunet_swin", "registration.py"))
_registration = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_registration)


class build_py_with_pth(build_py):
    """build_py that also writes the .pth hook into the root of build_lib (-> site-packages)."""

    def _pth_path(self):
        return os.path.join(self.build_lib, _registration.PTH_NAME)

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            # setuptools' editable_wheel builds into a throw-away build_lib and points install_lib at the
            # unpacked editable wheel, whose files land in site-packages next to its own __editable__ .pth.
            target = self.get_finalized_command("install").install_lib
            line = _registration.pth_line(os.path.join(_HERE, "nnunet_swin", "ext_trainers"))
        else:
            target, line = self.build_lib, _registration.PTH_LINE
        os.makedirs(target, exist_ok=True)
        with open(os.path.join(target, _registration.PTH_NAME), "w", encoding="utf-8") as f:
            f.write(line + "\n")

    def get_outputs(self, include_bytecode=True):
        outputs = list(super().get_outputs(include_bytecode))
        if not getattr(self, "editable_mode", False):
            outputs.append(self._pth_path())
        return outputs


setup(cmdclass={"build_py": build_py_with_pth})
