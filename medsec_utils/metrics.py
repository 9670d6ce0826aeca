"""Classification metrics with 95 % confidence intervals, perturbation sizes, and image-set metrics.

Accuracy gets a Wilson score interval (a binomial proportion); balanced accuracy and AUC get a
percentile bootstrap that resamples within each class, so every resample keeps both classes.
Generated images are judged on feature vectors computed once: FID (exact, by a small SVD), KID
(torchmetrics), precision and recall (Kynkaanniemi et al. 2019), and a memorisation audit by nearest
training neighbours. The default feature space is a seeded random-init VGG-16 (:class:`RandomVGGFeatures`),
which needs no download; :func:`degradation_fids` checks on each run that FID in a space grows as real
images are degraded and keeps pure noise and an untrained generator's images beyond them.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from scipy.stats import norm
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, roc_auc_score, roc_curve
from torch import nn
from torch.nn import functional as F
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure
from torchmetrics.image.kid import KernelInceptionDistance

from . import cache
from .models import IMAGENET_MEAN, IMAGENET_STD

Z95 = float(norm.ppf(0.975))


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``successes / n``."""
    if n == 0:
        return float("nan"), float("nan")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    low = 0.0 if successes == 0 else max(0.0, centre - half)  # exact at the ends, not off by rounding
    high = 1.0 if successes == n else min(1.0, centre + half)
    return float(low), float(high)


def bootstrap_interval(
    metric: Callable[[np.ndarray, np.ndarray], float], y_true: np.ndarray, score: np.ndarray,
    n_boot: int = 1000, seed: int = 0, level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``metric(y_true, score)``, resampling within each class."""
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(y_true == label) for label in np.unique(y_true)]
    values = np.empty(n_boot)
    for b in range(n_boot):
        index = np.concatenate([rng.choice(g, size=len(g), replace=True) for g in groups])
        values[b] = metric(y_true[index], score[index])
    tail = (1 - level) / 2 * 100
    return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))


def binary_report(
    y_true: np.ndarray, p_pathology: np.ndarray, threshold: float = 0.5, n_boot: int = 1000, seed: int = 0,
) -> dict[str, object]:
    """Accuracy, balanced accuracy, AUC (each with a 95 % CI), sensitivity, specificity, confusion matrix."""
    y_true = np.asarray(y_true).astype(int)
    p_pathology = np.asarray(p_pathology, dtype=float)
    pred = (p_pathology >= threshold).astype(int)
    n = len(y_true)
    correct = int((pred == y_true).sum())
    matrix = confusion_matrix(y_true, pred, labels=[0, 1])
    both = len(np.unique(y_true)) == 2
    report: dict[str, object] = {
        "n": n,
        "accuracy": correct / n if n else float("nan"),
        "accuracy_ci": wilson_interval(correct, n),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, pred)) if both else float("nan"),
        "balanced_accuracy_ci": bootstrap_interval(balanced_accuracy_score, y_true, pred, n_boot, seed)
        if both else (float("nan"), float("nan")),
        "auc": float(roc_auc_score(y_true, p_pathology)) if both else float("nan"),
        "auc_ci": bootstrap_interval(roc_auc_score, y_true, p_pathology, n_boot, seed)
        if both else (float("nan"), float("nan")),
        "sensitivity": float(matrix[1, 1] / max(1, matrix[1].sum())),
        "specificity": float(matrix[0, 0] / max(1, matrix[0].sum())),
        "confusion_matrix": matrix.tolist(),
    }
    return report


def roc_points(y_true: np.ndarray, p_pathology: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates of the ROC curve."""
    fpr, tpr, _ = roc_curve(y_true, p_pathology)
    return fpr, tpr


def perturbation_sizes(clean: torch.Tensor, adversarial: torch.Tensor) -> dict[str, np.ndarray]:
    """Per-image size of ``adversarial - clean`` (images in [0, 1]): L-inf, L2, PSNR (dB) and SSIM.

    PSNR and SSIM come from torchmetrics (data range 1, SSIM with its 11-px Gaussian window); an image
    left unchanged has PSNR ``inf`` and SSIM 1.
    """
    if len(clean) == 0:
        return {key: np.zeros(0) for key in ("linf", "l2", "psnr", "ssim")}
    clean, adversarial = clean.double(), adversarial.double()
    delta = (adversarial - clean).flatten(1)
    psnr = peak_signal_noise_ratio(adversarial, clean, data_range=1.0, reduction="none", dim=(1, 2, 3))
    ssim = structural_similarity_index_measure(adversarial, clean, data_range=1.0, reduction="none")
    return {"linf": delta.abs().amax(1).numpy(), "l2": delta.norm(dim=1).numpy(), "psnr": psnr.numpy(),
            "ssim": ssim.numpy()}


class _Precomputed(nn.Module):
    """Identity on feature vectors, so torchmetrics' FID and KID run on features computed once."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


FEATURE_SPACES = ("random_vgg16", "classifier", "inception")


class RandomVGGFeatures(nn.Module):
    """fc2 activations (4096-d) of a VGG-16 with seeded random weights: the default feature space here.

    Naeem, Oh, Uh, Choi & Yoo (*Reliable fidelity and diversity metrics for generative models*, ICML 2020,
    arXiv:2002.09797) proposed randomly initialised VGG-16 embeddings for data unlike ImageNet. They need
    no weights file, and the same seed gives the same network everywhere. Grey images are repeated to RGB
    and normalised with ImageNet statistics.
    """

    num_features = 4096

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.seed = seed
        self.identity = {"space": "random_vgg16", "seed": seed, "torch": torch.__version__,
                         "torchvision": torchvision.__version__}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            vgg = torchvision.models.vgg16(weights=None)
        self.features, self.pool, self.head = vgg.features, vgg.avgpool, vgg.classifier[:5]
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rgb = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        return self.head(self.pool(self.features((rgb - self.mean) / self.std)).flatten(1))


class ClassifierFeatures(nn.Module):
    """The pooled features a trained classifier feeds its last layer (timm ``pre_logits``).

    Not the default: a Normal/Pathology classifier's features are made to separate two classes, not to
    measure image quality, and need not keep an untrained generator's noise away from real images (the
    chapter-4 page checks both spaces on every data set).
    """

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier
        self.num_features = int(classifier.backbone.num_features)
        self.identity = {"space": "classifier", "weights": cache.tensor_fingerprint(classifier.state_dict())}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        backbone = self.classifier.backbone
        features = backbone.forward_features((x - self.classifier.mean) / self.classifier.std)
        return backbone.forward_head(features, pre_logits=True)


INCEPTION_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's release v0.2.0 on GitHub


class InceptionFeatures(nn.Module):
    """Inception-v3 pool features (2048-d), the space of standard FID, from a local weights file.

    Takes images in [0, 1] with 1 or 3 channels (grey is repeated) and feeds torchmetrics'
    ``NoTrainInceptionV3`` the uint8 RGB it expects. Nothing is downloaded: without the file this raises.
    """

    num_features = 2048

    def __init__(self, weights_path: str | Path) -> None:
        super().__init__()
        path = Path(weights_path)
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: Inception weights file not found. Download {INCEPTION_WEIGHTS} (torch-fidelity release "
                "v0.2.0) where you have internet and pass its path, or use RandomVGGFeatures (the default)")
        from torchmetrics.image.fid import NoTrainInceptionV3

        self.identity = {"space": "inception", "weights": cache.file_fingerprint(path)}
        self.inception = NoTrainInceptionV3("inception-v3-compat", [str(self.num_features)], str(path))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rgb = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        return self.inception((rgb.clamp(0, 1) * 255).round().to(torch.uint8)).reshape(len(x), -1)


def feature_space(name: str, *, classifier: nn.Module | None = None, inception_weights: str | Path | None = None,
                  seed: int = 0) -> tuple[nn.Module, str]:
    """The encoder of feature space ``name`` (one of ``FEATURE_SPACES``) and the description every table
    and figure prints with its numbers.

    Raises:
        ValueError: an unknown name, or a space without what it needs (classifier, weights file).
    """
    if name == "random_vgg16":
        return RandomVGGFeatures(seed), f"random-init VGG-16 fc2 (4096-d, seed {seed}; Naeem et al. 2020)"
    if name == "classifier":
        if classifier is None:
            raise ValueError("feature space 'classifier' needs the chapter-1 classifier")
        encoder = ClassifierFeatures(classifier)
        return encoder, f"penultimate features ({encoder.num_features}-d) of the chapter-1 classifier"
    if name == "inception":
        if inception_weights is None:
            raise ValueError(f"feature space 'inception' needs inception_weights: the path of {INCEPTION_WEIGHTS}")
        return InceptionFeatures(inception_weights), "Inception-v3 pool (2048-d, standard FID)"
    raise ValueError(f"unknown feature space {name!r}; choose from {', '.join(FEATURE_SPACES)}")


DEGRADATIONS = {"gaussian noise (std)": (0.0, 0.05, 0.1, 0.2), "box blur (px)": (1, 3, 5, 7)}


def degrade(x: torch.Tensor, kind: str, level: float, seed: int = 0) -> torch.Tensor:
    """Images ``x`` in [0, 1] with Gaussian noise of std ``level`` or a ``level``-px box blur (clamped)."""
    if kind == "gaussian noise (std)":
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed)).to(x.device)
        return (x + level * noise).clamp(0, 1)
    if kind == "box blur (px)":
        k = int(level)
        return x if k <= 1 else F.avg_pool2d(F.pad(x, [k // 2, (k - 1) // 2] * 2, mode="replicate"), k, 1)
    raise ValueError(f"unknown degradation {kind!r}; choose from {', '.join(DEGRADATIONS)}")


def degradation_fids(encoder: nn.Module, reference: torch.Tensor, heldout: torch.Tensor, device: torch.device,
                     sentinels: Mapping[str, torch.Tensor] | None = None, seed: int = 0,
                     size: int | None = None) -> list[dict[str, Any]]:
    """Does FID in this feature space grow as real images get worse? Held-out real images, degraded step
    by step (``DEGRADATIONS``), against ``reference`` real images: one row per degradation and level, with
    ``fid`` and ``fid_relative``; then one row per ``sentinels`` set (images nobody would take for real,
    such as pure noise or an untrained generator's), with ``sentinel`` naming it. A usable space is lowest
    at level 0, grows with every level and puts every sentinel beyond every degraded real set. The rows are
    kept in the artefact cache (the degraded images' features are not: they serve this check only).
    """
    sentinels = dict(sentinels or {})
    parts = {"encoder": encoder_identity(encoder), "images": cache.tensor_fingerprint(reference, heldout),
             "sentinels": {name: cache.tensor_fingerprint(x) for name, x in sentinels.items()}, "seed": seed,
             "size": size, "device": device.type, "code": cache.code_fingerprint("metrics")}

    def rows() -> list[dict[str, Any]]:
        ref = image_features(encoder, reference, device, size=size)

        def row(x: torch.Tensor, **where: Any) -> dict[str, Any]:
            scores = fid_kid(ref, image_features(encoder, x, device, size=size, keep=False), seed=seed)
            return {**where, "fid": scores["fid"], "fid_relative": scores["fid_relative"], "n_real": len(ref),
                    "n_fake": len(x)}

        degraded = [row(degrade(heldout, kind, level, seed), degradation=kind, level=level, sentinel=None)
                    for kind, levels in DEGRADATIONS.items() for level in levels]
        return degraded + [row(x, degradation=None, level=None, sentinel=name) for name, x in sentinels.items()]

    return cache.memoised("degradation_fids", parts, rows)[0]


def image_features(encoder: nn.Module, x: torch.Tensor, device: torch.device, batch_size: int = 128,
                   size: int | None = None, keep: bool = True) -> torch.Tensor:
    """``encoder`` features (float64, CPU) of images ``x`` in [0, 1], one row per image.

    ``size`` resizes the images first (bilinear), e.g. to the size the encoder was trained at. Kept in the
    artefact cache, keyed by the encoder (its ``identity``, set once from its seed or weights by the feature
    spaces here, else its weights' fingerprint), the images, size and device type: a rerun, or another
    chapter embedding the same images, loads them. ``keep=False`` for images embedded once whose result is
    kept at a coarser level (degraded copies, per-round samples).
    """
    if not keep:
        return _embed(encoder, x, device, batch_size, size)
    parts = {"encoder": encoder_identity(encoder), "images": cache.tensor_fingerprint(x), "size": size,
             "device": device.type, "code": cache.code_fingerprint("metrics")}
    return cache.memoised("features", parts, lambda: _embed(encoder, x, device, batch_size, size))[0]


def encoder_identity(encoder: nn.Module) -> Any:
    """What identifies an encoder's weights: its ``identity`` (set once by the feature spaces here), else a
    fingerprint of its class, structure and weights."""
    return getattr(encoder, "identity", None) or cache.module_fingerprint(encoder)


@torch.no_grad()
def _embed(encoder: nn.Module, x: torch.Tensor, device: torch.device, batch_size: int,
           size: int | None) -> torch.Tensor:
    encoder.eval().to(device)

    def batch(i: int) -> torch.Tensor:
        part = x[i:i + batch_size].to(device)
        if size is not None and part.shape[-1] != size:
            part = F.interpolate(part, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
        return encoder(part).flatten(1).double().cpu()

    rows = [batch(i) for i in range(0, len(x), batch_size)]
    return torch.cat(rows) if rows else torch.zeros(0, 0, dtype=torch.float64)


def fid_kid(real: torch.Tensor, fake: torch.Tensor, seed: int = 0, subsets: int = 100) -> dict[str, Any]:
    """FID (:func:`frechet_distance`) and KID (torchmetrics; mean and std over random subsets) between two
    sets of feature vectors. ``fid_relative`` divides the FID by the sets' total variance (tr S1 + tr S2),
    so it does not change when the features are scaled: compare it across feature spaces, not the FID.

    Raises:
        ValueError: fewer than two vectors in a set.
    """
    if min(len(real), len(fake)) < 2:
        raise ValueError(f"FID needs at least 2 feature vectors per set; got {len(real)} real and {len(fake)} fake")
    width = real.shape[1]
    with warnings.catch_warnings():  # "KID keeps all features in a buffer": these are the vectors we pass
        warnings.simplefilter("ignore", UserWarning)
        kid = KernelInceptionDistance(feature=_Precomputed(width), subsets=subsets,
                                      subset_size=min(1000, len(real), len(fake)))
    kid.update(real.double(), real=True)
    kid.update(fake.double(), real=False)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        kid_mean, kid_std = kid.compute()
    fid, spread = _frechet(real, fake)
    return {"fid": fid, "fid_relative": fid / spread if spread > 0 else float("nan"), "kid": float(kid_mean),
            "kid_std": float(kid_std), "n_real": len(real), "n_fake": len(fake)}


def frechet_distance(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to two sets of feature vectors (FID on those features).

    ``|mu1 - mu2|^2 + tr S1 + tr S2 - 2 tr sqrt(S1 S2)``, the formula torchmetrics uses, computed exactly
    but faster: ``tr sqrt(S1 S2)`` is the nuclear norm of ``F1^T F2`` for any factors ``S = F F^T``, and the
    centred vectors are a factor with one column per vector. With fewer vectors than features (hundreds of
    images, 1536-d features) that is a small SVD instead of eigenvalues of a d x d product: 100x faster
    or more (``benchmarks/bench_fid.py``), equal to torchmetrics' value to 1e-6 relative (tested). With
    more vectors than features the factor comes from an eigendecomposition and costs about as much.
    """
    return _frechet(real, fake)[0]


def _frechet(real: torch.Tensor, fake: torch.Tensor) -> tuple[float, float]:
    """The Frechet distance and the spread ``tr S1 + tr S2`` it contains, from one factor per set."""
    real, fake = real.double(), fake.double()
    factors = [_covariance_factor(x) for x in (real, fake)]
    cross = torch.linalg.svdvals(factors[0].T @ factors[1]).sum()
    spread = float(sum(f.square().sum() for f in factors))  # tr S = |F|_F^2
    return float((real.mean(0) - fake.mean(0)).square().sum() + spread - 2 * cross), spread


def _covariance_factor(x: torch.Tensor) -> torch.Tensor:
    """A d x min(n, d) matrix ``F`` with ``F F^T`` the sample covariance of the rows of ``x``."""
    centred = (x - x.mean(0)) / (len(x) - 1) ** 0.5
    if len(x) <= x.shape[1]:
        return centred.T
    values, vectors = torch.linalg.eigh(centred.T @ centred)
    return vectors * values.clamp(min=0).sqrt()


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> dict[str, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) of feature vectors.

    Precision: share of fake vectors inside some real vector's k-NN ball (fidelity). Recall: share of real
    vectors inside some fake vector's k-NN ball (coverage).
    """
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} vectors per set")
    real, fake = real.double(), fake.double()
    between = torch.cdist(fake, real)
    precision = (between <= _knn_radii(real, k)[None]).any(1).double().mean()
    recall = (between.T <= _knn_radii(fake, k)[None]).any(1).double().mean()
    return {"precision": float(precision), "recall": float(recall), "k": k}


def diversity(real: torch.Tensor, fake: torch.Tensor) -> float:
    """How much synthetic images vary against real ones: the mean pairwise Euclidean distance between the fake
    feature vectors over the same mean between the real ones. About 1 for a generator that varies as much as
    the data; near 0 for one that collapsed onto a few images, which a picture shows and this makes a number.

    Raises:
        ValueError: fewer than 2 vectors in a set.
    """
    if min(len(real), len(fake)) < 2:
        raise ValueError("diversity needs at least 2 feature vectors per set")
    return float(torch.pdist(fake.double()).mean() / torch.pdist(real.double()).mean())


def real_vs_synthetic_accuracy(real: torch.Tensor, fake: torch.Tensor, *, seed: int, folds: int = 5) -> float:
    """A machine reader's accuracy at telling real from synthetic feature vectors: a logistic regression on
    standardised features (as the reader study's machine reader), cross-validated in ``folds`` stratified folds on
    as many real as synthetic vectors (the larger set subsampled with ``seed``). 0.5: the sets cannot be told
    apart in that space; 1.0: every synthetic image gives itself away.

    Raises:
        ValueError: fewer than ``folds`` vectors in a set.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    n = min(len(real), len(fake))
    if n < folds:
        raise ValueError(f"a {folds}-fold machine reader needs at least {folds} vectors per set, got {n}")
    pick = torch.Generator().manual_seed(seed)
    x = torch.cat([v[torch.randperm(len(v), generator=pick)[:n]] for v in (real, fake)]).double().numpy()
    y = np.repeat([0, 1], n)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    return float(cross_val_score(model, x, y, cv=StratifiedKFold(folds, shuffle=True, random_state=seed)).mean())


def _knn_radii(x: torch.Tensor, k: int) -> torch.Tensor:
    return torch.cdist(x, x).kthvalue(k + 1, dim=1).values  # k + 1: each vector is its own nearest neighbour


def nearest_neighbours(queries: torch.Tensor, references: torch.Tensor,
                       chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Euclidean distance to, and index of, the nearest reference of every query (rows are vectors)."""
    distances, indices = [], []
    for start in range(0, len(queries), chunk):
        nearest = torch.cdist(queries[start:start + chunk].double(), references.double()).min(1)
        distances.append(nearest.values)
        indices.append(nearest.indices)
    return torch.cat(distances), torch.cat(indices)


def memorisation_audit(train: torch.Tensor, heldout: torch.Tensor, synthetic: torch.Tensor) -> dict[str, Any]:
    """Are synthetic images copies of training images? Compare their nearest-training distances with
    those of held-out real images (patients the generator never saw), in one vector space.

    A synthetic image closer to its nearest training image than *any* held-out image is to the
    training set is flagged as a near-copy (``near_copy``); ``closer_than_median_share`` is a softer view.
    Rows are vectors: flatten images for pixel space. Kept in the artefact cache, keyed by the three sets.
    """
    parts = {"vectors": cache.tensor_fingerprint(train, heldout, synthetic), "code": cache.code_fingerprint("metrics")}
    return cache.memoised("memorisation_audit", parts, lambda: _audit(train, heldout, synthetic))[0]


def _audit(train: torch.Tensor, heldout: torch.Tensor, synthetic: torch.Tensor) -> dict[str, Any]:
    synthetic_distance, nearest = nearest_neighbours(synthetic, train)
    heldout_distance, _ = nearest_neighbours(heldout, train)
    threshold = float(heldout_distance.min())
    near_copy = synthetic_distance < threshold
    return {"synthetic_distance": synthetic_distance.numpy(), "nearest_train": nearest.numpy(),
            "heldout_distance": heldout_distance.numpy(), "threshold": threshold, "near_copy": near_copy.numpy(),
            "near_copy_share": float(near_copy.double().mean()),
            "closer_than_median_share": float((synthetic_distance < heldout_distance.median()).double().mean()),
            "n_synthetic": len(synthetic), "n_heldout": len(heldout), "n_train": len(train)}
