"""latent-balance: make pretrained GANs produce balanced (or any chosen) attribute distributions.

Public API (everything else is private):

* generators: :func:`load_generator`, :class:`GeneratorAdapter`, :class:`DCGANFaces`,
  :class:`CallableGenerator`, :class:`StyleGAN2Adapter`;
* probes and models: :func:`build_probes`, :class:`ProbeSet`, :class:`BoundarySet`, :class:`SubgroupModel`;
* targets and sampling: :class:`Target`, :class:`BalancedSampler`, :class:`SampleResult`,
  :class:`BalancedDataset`;
* datasets and audits: :func:`write_dataset`, :func:`merge_shards`, :func:`audit_dataset`,
  :func:`audit_generator`;
* the Ray engine (needs ``latent-balance[ray]``): :func:`write_dataset_ray`, :func:`build_probes_ray`;
* testing other models on a dataset: :func:`evaluate_dataset` (classifiers, counterfactual pairs,
  image-to-image systems), :class:`EvaluationError`;
* labelers made from examples: :func:`make_labeler`, :func:`load_labeler` (importing the package
  lets labeler specs name ``.labeler`` files);
* forgetting a person (``BalancedSampler(exclude=...)``): :func:`person_from_photos`, :func:`person_from_seeds`,
  :func:`make_person`, :func:`save_person`, :func:`load_person`, :class:`Person`, :class:`PersonFileError`;
* progress output on stderr: :func:`set_progress`.

Attribute labelers live in the sibling package ``attributes``; the StyleGAN2 runtime in ``stylegan_ops``.
"""

from ._utils import set_progress
from .audit import audit_dataset, audit_generator
from .boundaries import BoundaryFileError, BoundarySet
from .distributed import build_probes_ray, write_dataset_ray
from .evaluate import EvaluationError, evaluate_dataset
from .example_labelers import ExamplesError, load_labeler, make_labeler
from .export import DatasetError, merge_shards, write_dataset
from .forget import (Person, PersonFileError, load_person, make_person, person_from_photos, person_from_seeds,
                     save_person)
from .generators import (
    CallableGenerator,
    DCGANFaces,
    GeneratorAdapter,
    StyleGAN2Adapter,
    available_generators,
    load_generator,
)
from .probes import ProbeFileError, ProbeSet, build_probes
from .sampling import (BalancedDataset, BalancedSampler, BalancedSource, BudgetError, SampleResult, SamplingError,
                      TooFewProbes, UnreachableTarget)
from .subgroups import CellSpace, SubgroupFileError, SubgroupModel
from .targets import Target, TargetError

__version__ = "0.1.0"

__all__ = [
    "ExamplesError",
    "load_labeler",
    "make_labeler",
    "BalancedDataset",
    "BalancedSampler",
    "BalancedSource",
    "BoundaryFileError",
    "BoundarySet",
    "BudgetError",
    "CellSpace",
    "DatasetError",
    "EvaluationError",
    "ProbeFileError",
    "SamplingError",
    "SubgroupFileError",
    "TargetError",
    "TooFewProbes",
    "UnreachableTarget",
    "CallableGenerator",
    "DCGANFaces",
    "GeneratorAdapter",
    "ProbeSet",
    "SampleResult",
    "StyleGAN2Adapter",
    "SubgroupModel",
    "Target",
    "audit_dataset",
    "audit_generator",
    "available_generators",
    "build_probes",
    "build_probes_ray",
    "evaluate_dataset",
    "load_generator",
    "merge_shards",
    "set_progress",
    "write_dataset",
    "write_dataset_ray",
    "Person",
    "PersonFileError",
    "load_person",
    "make_person",
    "person_from_photos",
    "person_from_seeds",
    "save_person",
]
