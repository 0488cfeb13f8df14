"""Application services: plain Python behind the CLI, the UI and the API (no gradio here)."""
from emoweb.services.caregiver import CaregiverService
from emoweb.services.records import (
    ClipInfo,
    ClipResult,
    CorrectionInfo,
    ImportReport,
    ModelPrediction,
    ModelRebuild,
    ProfileInfo,
    QueueEntry,
)

__all__ = [
    "CaregiverService",
    "ClipInfo",
    "ClipResult",
    "CorrectionInfo",
    "ImportReport",
    "ModelPrediction",
    "ModelRebuild",
    "ProfileInfo",
    "QueueEntry",
]
