"""notify-delivery: records notification outcomes into ``notify.delivery_log``.

Stream in: ``notify:delivery`` (group ``notify-workers``). Idempotency key: the
event's ``eventId`` (inbox) and, for the row, ``deliveryId``. A delivery's row
converges to its latest attempt whatever the arrival order: a higher attempt
wins, and at equal attempts ``sent`` wins over ``failed``.
"""

from workers.notify_delivery.worker import NotifyDeliveryWorker

__all__ = ["NotifyDeliveryWorker"]
