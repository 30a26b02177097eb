use std::collections::BTreeMap;

use crate::{Apqn, CardType};

/// One AP card as sysfs shows it below `/sys/devices/ap/cardXX`.
///
/// `None` means the kernel offers no such attribute: `online` and `type`
/// exist only while the `cex4card` driver is bound, `config` and
/// `chkstop` only on newer kernels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Card {
    pub adapter: u8,
    pub card_type: Option<CardType>,
    pub hwtype: Option<u32>,
    pub raw_hwtype: Option<u32>,
    pub online: Option<bool>,
    pub config: Option<bool>,
    pub chkstop: Option<bool>,
}

/// One AP queue (APQN) as sysfs shows it below its card directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queue {
    pub apqn: Apqn,
    pub online: Option<bool>,
    pub config: Option<bool>,
    pub chkstop: Option<bool>,
}

/// The cards and queues found by one scan of the AP bus.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    pub cards: BTreeMap<u8, Card>,
    pub queues: BTreeMap<Apqn, Queue>,
}

impl Inventory {
    pub fn card(&self, adapter: u8) -> Option<&Card> {
        self.cards.get(&adapter)
    }

    pub fn queue(&self, apqn: Apqn) -> Option<&Queue> {
        self.queues.get(&apqn)
    }

    /// Reports whether a container may use `apqn` now: the queue and its
    /// card are online, configured and not check-stopped.
    ///
    /// A missing `config` counts as configured and a missing `chkstop` as
    /// not check-stopped, as lszcrypt reads them; a missing `online` (no
    /// zcrypt driver bound) counts as offline.
    pub fn is_usable(&self, apqn: Apqn) -> bool {
        let Some(queue) = self.queue(apqn) else {
            return false;
        };
        let Some(card) = self.card(apqn.adapter) else {
            return false;
        };
        let state_ok = |online: Option<bool>, config: Option<bool>, chkstop: Option<bool>| {
            online == Some(true) && config != Some(false) && chkstop != Some(true)
        };
        state_ok(queue.online, queue.config, queue.chkstop)
            && state_ok(card.online, card.config, card.chkstop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CexMode;

    fn inventory(card_online: bool, queue: Queue) -> Inventory {
        let card = Card {
            adapter: 1,
            card_type: Some(CardType {
                generation: 8,
                mode: CexMode::Ep11,
            }),
            hwtype: Some(14),
            raw_hwtype: Some(14),
            online: Some(card_online),
            config: None,
            chkstop: None,
        };
        Inventory {
            cards: BTreeMap::from([(1, card)]),
            queues: BTreeMap::from([(queue.apqn, queue)]),
        }
    }

    #[test]
    fn usable_needs_queue_and_card_ready() {
        let apqn = Apqn::new(1, 5);
        let ready = Queue {
            apqn,
            online: Some(true),
            config: Some(true),
            chkstop: Some(false),
        };
        assert!(inventory(true, ready.clone()).is_usable(apqn));
        assert!(!inventory(false, ready.clone()).is_usable(apqn));
        assert!(!inventory(
            true,
            Queue {
                online: Some(false),
                ..ready.clone()
            }
        )
        .is_usable(apqn));
        assert!(!inventory(
            true,
            Queue {
                config: Some(false),
                ..ready.clone()
            }
        )
        .is_usable(apqn));
        assert!(!inventory(
            true,
            Queue {
                chkstop: Some(true),
                ..ready.clone()
            }
        )
        .is_usable(apqn));
        assert!(!inventory(
            true,
            Queue {
                online: None,
                ..ready.clone()
            }
        )
        .is_usable(apqn));
        assert!(!inventory(true, ready).is_usable(Apqn::new(1, 6)));
    }

    #[test]
    fn missing_config_and_chkstop_count_as_ready() {
        let apqn = Apqn::new(1, 5);
        let queue = Queue {
            apqn,
            online: Some(true),
            config: None,
            chkstop: None,
        };
        assert!(inventory(true, queue).is_usable(apqn));
    }
}
