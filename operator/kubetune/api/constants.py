"""Names of the API group, its kinds and the labels/annotations kubetune owns."""

GROUP = "kubetune.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

FINETUNEJOB = "FineTuneJob"
PREFERENCEALIGNMENT = "PreferenceAlignment"
KINDS = (FINETUNEJOB, PREFERENCEALIGNMENT)

PLURALS = {FINETUNEJOB: "finetunejobs", PREFERENCEALIGNMENT: "preferencealignments"}
SHORT_NAMES = {FINETUNEJOB: ["ftj"], PREFERENCEALIGNMENT: ["pa"]}
CATEGORY = "kubetune"

# Labels put on every child object, so a selector finds a job's children.
LABEL_JOB = f"{GROUP}/job"  # the CR's name
LABEL_KIND = f"{GROUP}/kind"  # FineTuneJob | PreferenceAlignment
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
# Which of a job's two batch/v1 Jobs (and their pods) an object belongs to: the data preflight (CPU
# only, first) or the trainer (GPUs, created once the preflight passed). A Job without it is a trainer.
LABEL_COMPONENT = f"{GROUP}/component"
LABEL_ATTEMPT = f"{GROUP}/attempt"  # a trainer Job's attempt (spec.training.oomRetry): "2", "3", ... (absent: 1)
COMPONENT_PREFLIGHT = "preflight"
COMPONENT_TRAINER = "trainer"

# The trainer -> operator channel (see docs/trainer-channel.md): the trainer patches these
# annotations on its own Pod; the operator reads them from the Pod it watches.
ANNOTATION_PROGRESS = f"{GROUP}/progress"
ANNOTATION_RESULT = f"{GROUP}/result"
