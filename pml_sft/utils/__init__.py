from .recall_at_k import RecallAtK
from .schedule import training_iterations
