//! Changes that the hardware or firmware makes behind the kernel's back:
//! a card or queue leaving the configuration, and online, configured and
//! check-stop state flips. They reach the model directly, not through a
//! file write, so no errno rule applies.

use cex_ap::Apqn;

use super::model::Sim;
use super::FuseError;
use crate::machines::{CardSpec, QueueSpec};

impl Sim {
    fn unknown_card(&self, adapter: u8) -> FuseError {
        FuseError::UnknownCard {
            machine: self.machine.name.clone(),
            adapter,
        }
    }

    fn fault_card(&mut self, adapter: u8) -> Result<&mut CardSpec, FuseError> {
        let error = self.unknown_card(adapter);
        self.machine.card_mut(adapter).ok_or(error)
    }

    fn fault_queue(&mut self, apqn: Apqn) -> Result<&mut QueueSpec, FuseError> {
        let machine = self.machine.name.clone();
        self.fault_card(apqn.adapter)?
            .queues
            .iter_mut()
            .find(|queue| queue.domain == apqn.domain)
            .ok_or(FuseError::UnknownQueue { machine, apqn })
    }

    /// Removes a queue directory and its bus links.
    pub(crate) fn vanish_queue(&mut self, apqn: Apqn) -> Result<(), FuseError> {
        let card = self.fault_card(apqn.adapter)?;
        let driver = card
            .queue(apqn.domain)
            .and_then(|queue| queue.driver.clone());
        let position = card
            .queues
            .iter()
            .position(|queue| queue.domain == apqn.domain);
        let Some(position) = position else {
            let machine = self.machine.name.clone();
            return Err(FuseError::UnknownQueue { machine, apqn });
        };
        card.queues.remove(position);
        self.unlink_device(&apqn.queue_dir_name(), driver.as_deref());
        let dir = format!(
            "sys/devices/ap/{}/{}",
            apqn.card_dir_name(),
            apqn.queue_dir_name()
        );
        self.tree.remove_path(&dir);
        self.count_scan();
        Ok(())
    }

    /// Removes a card directory with its queues, their bus links, and the
    /// card's bit in `ap_adapter_mask`.
    pub(crate) fn vanish_card(&mut self, adapter: u8) -> Result<(), FuseError> {
        let position = self
            .machine
            .cards
            .iter()
            .position(|card| card.adapter == adapter)
            .ok_or_else(|| self.unknown_card(adapter))?;
        let card = self.machine.cards.remove(position);
        for queue in &card.queues {
            let name = Apqn::new(adapter, queue.domain).queue_dir_name();
            self.unlink_device(&name, queue.driver.as_deref());
        }
        let name = format!("card{adapter:02x}");
        self.unlink_device(&name, card.driver.as_deref());
        self.tree.remove_path(&format!("sys/devices/ap/{name}"));
        if let Some(bus) = &mut self.machine.ap_bus {
            bus.adapter_mask.clear(adapter);
        }
        self.count_scan();
        Ok(())
    }

    fn unlink_device(&mut self, name: &str, driver: Option<&str>) {
        self.tree.remove_path(&format!("sys/bus/ap/devices/{name}"));
        if let Some(driver) = driver {
            self.tree
                .remove_path(&format!("sys/bus/ap/drivers/{driver}/{name}"));
        }
    }

    /// Sets a card's software online flag and those of its queues.
    pub(crate) fn flip_card_online(&mut self, adapter: u8, online: bool) -> Result<(), FuseError> {
        let card = self.fault_card(adapter)?;
        card.online = online;
        card.queues
            .iter_mut()
            .for_each(|queue| queue.online = online);
        Ok(())
    }

    /// Configures or deconfigures a card with its queues.
    pub(crate) fn flip_card_config(&mut self, adapter: u8, config: bool) -> Result<(), FuseError> {
        let card = self.fault_card(adapter)?;
        card.config = config;
        card.queues
            .iter_mut()
            .for_each(|queue| queue.config = config);
        self.count_scan();
        Ok(())
    }

    /// Check-stops a card with its queues, or clears the check-stop.
    pub(crate) fn flip_card_chkstop(
        &mut self,
        adapter: u8,
        chkstop: bool,
    ) -> Result<(), FuseError> {
        let card = self.fault_card(adapter)?;
        card.chkstop = chkstop;
        card.queues
            .iter_mut()
            .for_each(|queue| queue.chkstop = chkstop);
        self.count_scan();
        Ok(())
    }

    pub(crate) fn flip_queue_online(&mut self, apqn: Apqn, online: bool) -> Result<(), FuseError> {
        self.fault_queue(apqn)?.online = online;
        Ok(())
    }

    pub(crate) fn flip_queue_config(&mut self, apqn: Apqn, config: bool) -> Result<(), FuseError> {
        self.fault_queue(apqn)?.config = config;
        self.count_scan();
        Ok(())
    }

    pub(crate) fn flip_queue_chkstop(
        &mut self,
        apqn: Apqn,
        chkstop: bool,
    ) -> Result<(), FuseError> {
        self.fault_queue(apqn)?.chkstop = chkstop;
        self.count_scan();
        Ok(())
    }
}
