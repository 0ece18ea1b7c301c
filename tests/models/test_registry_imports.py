"""The registry is one table that names every model without loading one: importing isc.models loads no
builder's module (ONNX, PDQ, timm, TorchScript); a model's module is imported when that model is built."""

import json

from conftest import run_python


def test_the_registry_imports_no_builder_module():
    listed = run_python("-c", "import json, sys, isc.models; from isc.models import REGISTRY; "
                        "print(json.dumps([len(REGISTRY), sorted(m for m in sys.modules if m.startswith('isc.models.'))]))")
    assert listed.returncode == 0, listed.stderr
    entries, loaded = json.loads(listed.stdout)
    assert entries > 5 and loaded == ["isc.models.base", "isc.models.registry"]
    built = run_python("-c", "import sys; from isc.models import create_model; create_model('pdq'); "
                       "print('isc.models.pdq' in sys.modules, 'isc.models.onnx_graphs' in sys.modules)")
    assert built.stdout.split() == ["True", "False"], built.stderr
