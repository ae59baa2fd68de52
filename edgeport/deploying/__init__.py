"""Deploying a pushed artifact on Kubernetes: manifests for KServe (ServingRuntime +
InferenceService, LLMInferenceService with the llm-d scheduler) or plain Kubernetes (Deployment,
Service, PodDisruptionBudget), sized by the planner for a node profile, the model served from a
modelcar image (publishing/modelcar.py) pinned by digest.

sizing.py turns a plan into per-pod resources and engine options; objects.py holds what every
manifest shares (digest-pinned images, probes, the API key Secret, resources); engines.py the
llama-server and vLLM command lines; kserve.py and k8s.py the objects; validate.py checks them
against Kubernetes' and KServe's schemas; deploy.py writes them."""

from edgeport.core.errors import EdgeportError


class DeployError(EdgeportError):
    """Manifests that cannot be written: a tag-only image, a model that does not fit the node
    profile, a layout the chosen output cannot run."""
