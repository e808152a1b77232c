"""The zoo's convention: every entry builds, its head is replaced, forward gives [batch, classes]."""
import pytest
import torch

from imgcls.models.zoo.weights import WeightsError, read_state_dict
from imgcls.models.zoo.registry import SEED_ARCHS, ZOO, create, default_preprocess, entry_for, pretrained

REQUIRED = {
    "resnet50", "resnet101", "resnet152", "vgg16", "vgg19", "inception_v3", "mobilenet_v2",
    *(f"efficientnet_b{i}" for i in range(8)), "vit_b_16", "resnet18", "mobilenet_v3_small",
    "mobilenet_v3_large", "efficientnet_lite0", "tiny",
}


def test_zoo_has_every_promised_backbone():
    assert REQUIRED <= set(ZOO)
    assert set(SEED_ARCHS) == REQUIRED - {"resnet18", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_lite0", "tiny"}


def forward_shape(arch: str, num_classes: int) -> tuple[int, ...]:
    torch.manual_seed(0)
    model = create(arch, num_classes, weights="none").eval()
    size = default_preprocess(arch).crop_size
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    return tuple(out.shape)


@pytest.mark.parametrize("arch", ["tiny", "resnet18", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_lite0"])
def test_quick_archs_forward(arch):
    assert forward_shape(arch, 7) == (2, 7)


@pytest.mark.slow
@pytest.mark.parametrize("arch", sorted(set(ZOO) - {"tiny", "resnet18", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_lite0"}))
def test_every_arch_forward(arch):
    assert forward_shape(arch, 5) == (2, 5)


def test_inception_aux_head_is_replaced_too():
    model = create("inception_v3", 4, weights="none")
    assert model.fc.out_features == 4
    assert model.AuxLogits.fc.out_features == 4


def test_unknown_arch_lists_choices():
    with pytest.raises(KeyError, match="resnet50"):
        entry_for("resnet5O")


def test_lite0_imagenet_weights_load_offline_and_classify_a_cat():
    """The package's weights map onto timm's lite0: a photo of a cat is classified as a cat."""
    skimage = pytest.importorskip("skimage.data")
    from PIL import Image

    model = create("efficientnet_lite0", 1000, weights="imagenet").eval()
    # create() replaced the head; put the ImageNet head back from the package to check the features.
    model_full = pretrained("efficientnet_lite0").eval()
    image = Image.fromarray(skimage.chelsea())
    batch = torch.from_numpy(default_preprocess("efficientnet_lite0")(image))[None]
    with torch.no_grad():
        top5 = model_full(batch).topk(5).indices[0].tolist()
        backbone_same = torch.allclose(
            model.forward_features(batch), model_full.forward_features(batch)
        )
    assert backbone_same  # create(weights="imagenet") kept the pretrained backbone
    assert top5[0] in range(281, 286), top5  # ImageNet's domestic cat classes


def test_imagenet_offline_without_cache_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsError) as info:
        create("resnet18", 3, weights="imagenet")
    message = str(info.value)
    assert "resnet18-" in message and str(tmp_path) in message and "--weights" in message


def test_local_weights_file(tmp_path):
    from safetensors.torch import save_file

    source = create("tiny", 1000, weights="none")
    with torch.no_grad():
        source.features[0].weight.fill_(0.25)
    save_file(source.state_dict(), str(tmp_path / "w.safetensors"))
    torch.save(source.state_dict(), tmp_path / "w.pth")
    for name in ("w.safetensors", "w.pth"):
        model = create("tiny", 3, weights=str(tmp_path / name))
        assert torch.all(model.features[0].weight == 0.25)
        assert model.head.out_features == 3


def test_weights_of_another_arch_are_refused(tmp_path):
    from safetensors.torch import save_file

    save_file(create("resnet18", 1000, weights="none").state_dict(), str(tmp_path / "r.safetensors"))
    with pytest.raises(WeightsError, match="does not fit tiny"):
        create("tiny", 3, weights=str(tmp_path / "r.safetensors"))


def test_pickle_with_code_is_refused(tmp_path):
    import pickle

    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"weight": Exploit()}))
    with pytest.raises(WeightsError, match="refused"):
        read_state_dict(path)
    assert not marker.exists()
