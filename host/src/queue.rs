//! In-memory schedule of stored work (deliveries, queued events) by due time.
//!
//! The database is the truth; this only says what to look at next, and is rebuilt from the
//! database at start-up.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;

#[derive(Default)]
pub struct DueQueue {
    heap: Mutex<Heap>,
    changed: Notify,
}

#[derive(Default)]
struct Heap {
    due: BinaryHeap<Reverse<(u64, u64)>>,
    /// Items taken with [`DueQueue::hold_due`] or announced with [`DueQueue::hold_one`], and
    /// not yet released.
    in_hand: usize,
}

impl DueQueue {
    pub fn schedule(&self, due_ms: u64, id: u64) {
        self.heap().due.push(Reverse((due_ms, id)));
        self.changed.notify_one();
    }

    /// Counts an item on its way (not yet scheduled) as in hand, so that the queue is not
    /// idle, until [`DueQueue::release`].
    pub fn hold_one(&self) {
        self.heap().in_hand += 1;
    }

    fn heap(&self) -> std::sync::MutexGuard<'_, Heap> {
        self.heap.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many items wait, and when the earliest is due.
    pub fn depth(&self) -> (usize, Option<u64>) {
        let heap = self.heap();
        (
            heap.due.len(),
            heap.due.peek().map(|Reverse((due, _))| *due),
        )
    }

    /// How long the earliest item has been due, 0 when none is.
    pub fn overdue_ms(&self, now_ms: u64) -> u64 {
        self.heap()
            .due
            .peek()
            .map_or(0, |Reverse((due, _))| now_ms.saturating_sub(*due))
    }

    /// Whether nothing waits and nothing taken is still in hand.
    pub fn is_idle(&self) -> bool {
        let heap = self.heap();
        heap.due.is_empty() && heap.in_hand == 0
    }

    /// Waits until the earliest item is due and takes it.
    pub async fn next_due(&self) -> u64 {
        self.take_due(false, 1).await[0]
    }

    /// Waits until the earliest item is due and takes it with the others due, `max` at most,
    /// in order. They count as in hand, so the queue is not idle, until each is released
    /// ([`DueQueue::release`]).
    pub async fn hold_due(&self, max: usize) -> Vec<u64> {
        self.take_due(true, max).await
    }

    pub fn release(&self) {
        let mut heap = self.heap();
        heap.in_hand = heap.in_hand.saturating_sub(1);
    }

    async fn take_due(&self, hold: bool, max: usize) -> Vec<u64> {
        loop {
            let wait = {
                let now = crate::now_ms();
                let mut heap = self.heap();
                match heap.due.peek() {
                    Some(Reverse((due, _))) if *due <= now => {
                        let mut taken = Vec::new();
                        while let Some(Reverse((due, id))) = heap.due.peek().copied() {
                            if due > now || taken.len() == max {
                                break;
                            }
                            heap.due.pop();
                            taken.push(id);
                        }
                        if hold {
                            heap.in_hand += taken.len();
                        }
                        return taken;
                    }
                    Some(Reverse((due, _))) => Some(Duration::from_millis(due - now)),
                    None => None,
                }
            };
            match wait {
                Some(wait) => {
                    let _ = tokio::time::timeout(wait, self.changed.notified()).await;
                }
                None => self.changed.notified().await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hands_out_due_items_in_time_order() {
        let queue = DueQueue::default();
        let now = crate::now_ms();
        queue.schedule(now + 30, 3);
        queue.schedule(now, 1);
        queue.schedule(now + 10, 2);
        assert_eq!(queue.next_due().await, 1);
        assert_eq!(queue.next_due().await, 2);
        assert_eq!(queue.next_due().await, 3);
        assert!(crate::now_ms() >= now + 30);
    }

    #[tokio::test]
    async fn an_earlier_item_wakes_a_waiter_and_a_late_schedule_is_not_missed() {
        let queue = std::sync::Arc::new(DueQueue::default());
        let now = crate::now_ms();
        queue.schedule(now + 3_600_000, 2);
        let waiter = tokio::spawn({
            let queue = queue.clone();
            async move { queue.next_due().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        queue.schedule(now, 1);
        let woken = tokio::time::timeout(Duration::from_secs(5), waiter).await;
        assert_eq!(woken.unwrap().unwrap(), 1);

        // Scheduled while nobody waits, and already past due: handed out at once.
        queue.schedule(now.saturating_sub(1_000), 3);
        let next = tokio::time::timeout(Duration::from_secs(5), queue.next_due()).await;
        assert_eq!(next.unwrap(), 3);
    }

    #[tokio::test]
    async fn an_item_held_keeps_the_queue_busy_until_released() {
        let queue = DueQueue::default();
        assert!(queue.is_idle());
        queue.schedule(crate::now_ms(), 1);
        assert!(!queue.is_idle());
        queue.schedule(crate::now_ms(), 2);
        assert_eq!(queue.hold_due(10).await, [1, 2], "what is due, in order");
        queue.release();
        assert!(!queue.is_idle(), "one taken is still in hand");
        queue.release();
        assert!(queue.is_idle());
        queue.schedule(crate::now_ms(), 3);
        assert_eq!(queue.next_due().await, 3);
        assert!(queue.is_idle(), "taken without holding");
    }

    #[tokio::test]
    async fn a_batch_takes_only_what_is_due_and_at_most_max() {
        let queue = DueQueue::default();
        let now = crate::now_ms();
        for id in 1..=3 {
            queue.schedule(now, id);
        }
        queue.schedule(now + 3_600_000, 4);
        assert_eq!(queue.hold_due(2).await, [1, 2]);
        assert_eq!(queue.hold_due(10).await, [3], "4 is not due");
        assert_eq!(queue.depth(), (1, Some(now + 3_600_000)));
    }

    #[test]
    fn only_items_due_count_as_overdue() {
        let queue = DueQueue::default();
        assert_eq!(queue.overdue_ms(1_000), 0, "empty");
        queue.schedule(5_000, 1);
        assert_eq!(queue.overdue_ms(1_000), 0, "waiting for a retry");
        queue.schedule(800, 2);
        assert_eq!(queue.overdue_ms(1_000), 200);
    }

    #[test]
    fn an_item_announced_keeps_the_queue_busy_until_released() {
        let queue = DueQueue::default();
        queue.hold_one();
        assert!(!queue.is_idle(), "on its way");
        queue.schedule(crate::now_ms(), 1);
        queue.release();
        assert!(!queue.is_idle(), "scheduled");
    }
}
