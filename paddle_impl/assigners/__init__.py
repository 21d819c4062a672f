from paddle_impl.assigners.max_iou import AssignResult, MaxIoUAssigner, box_iou

__all__ = ["AssignResult", "MaxIoUAssigner", "box_iou"]
