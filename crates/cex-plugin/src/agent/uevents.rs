//! The AP bus uevent listener. It reads kernel uevents from a
//! `NETLINK_KOBJECT_UEVENT` socket bound to multicast group 1 (the
//! kernel's group, not udev's) and fires the rescan trigger shortly after
//! any event of subsystem `ap`. Hot plug, unplug and online or config
//! changes so reach the kubelet without waiting for `APQN_CHECK_INTERVAL`.
//!
//! Events are only a hint: the rescan reads sysfs as usual, and the
//! periodic rescan stays, because check-stop changes send no uevent and a
//! full socket buffer drops events. When the socket cannot be opened or
//! bound, the listener logs that once and the periodic rescan alone
//! follows the bus. A simulated node gets no uevents for its sysfs tree,
//! so there the periodic rescan is the only mechanism.
//!
//! The kernel sends uevents of devices without a network-namespace tag
//! (every AP card and queue) to the uevent sockets of all network
//! namespaces owned by the initial user namespace (`uevent_net_init` and
//! `kobject_uevent_net_broadcast` in `lib/kobject_uevent.c`), so the agent
//! receives them in a pod network namespace too, unless the pod runs in
//! its own user namespace.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use cex_ap::uevent::{ap_change, UEvent};
use netlink_sys::protocols::NETLINK_KOBJECT_UEVENT;
use netlink_sys::{AsyncSocket, AsyncSocketExt, SocketAddr, TokioSocket};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Wait after the first AP event before the rescan, so that a card add
/// and the one event per queue that follows it cause a single rescan.
const EVENT_SETTLE: Duration = Duration::from_millis(30);

/// The kernel's uevent multicast group (udev re-sends on group 2).
const KERNEL_GROUP: u32 = 1;

/// Receive buffer asked for, so that the events of a card with many
/// domains fit; the kernel caps it at `net.core.rmem_max`.
const RECEIVE_BUFFER: usize = 1 << 20;

/// Consecutive receive errors after which the listener gives up.
const MAX_RECEIVE_ERRORS: u32 = 10;

/// A source of uevent messages.
pub(crate) trait MessageSource {
    /// Waits for the next message; `Ok(None)` for a message to ignore.
    async fn next_message(&mut self) -> io::Result<Option<Vec<u8>>>;
}

/// The kernel's uevent netlink socket.
// NOTE: tests bind this socket but feed AP events through a datagram
// socket only, because no test machine has an AP bus that sends them.
struct KernelSocket(TokioSocket);

impl KernelSocket {
    fn open() -> io::Result<Self> {
        let mut socket = TokioSocket::new(NETLINK_KOBJECT_UEVENT)?;
        socket
            .socket_mut()
            .bind(&SocketAddr::new(0, KERNEL_GROUP))?;
        if let Err(error) = socket.socket_ref().set_rx_buf_sz(RECEIVE_BUFFER) {
            tracing::debug!(%error, "uevent socket keeps its default receive buffer");
        }
        Ok(Self(socket))
    }
}

impl MessageSource for KernelSocket {
    async fn next_message(&mut self) -> io::Result<Option<Vec<u8>>> {
        let (message, sender) = self.0.recv_from_full().await?;
        // Port id 0 is the kernel; anything else is a user-space process
        // sending to our port directly.
        if sender.port_number() != 0 {
            tracing::debug!(
                port = sender.port_number(),
                "ignoring uevent not sent by the kernel"
            );
            return Ok(None);
        }
        Ok(Some(message))
    }
}

/// Listens for AP bus uevents until cancelled and fires `rescan` after
/// each burst. Returns at once (after one log line) when the kernel
/// socket is unavailable.
pub(crate) async fn run_uevents(rescan: Arc<Notify>, cancel: CancellationToken) {
    match KernelSocket::open() {
        Ok(socket) => {
            tracing::info!("listening for AP bus uevents");
            listen(socket, rescan, cancel).await;
        }
        Err(error) => {
            tracing::warn!(%error, "cannot listen for kernel uevents, AP bus changes are seen at the APQN_CHECK_INTERVAL rescan only");
        }
    }
}

/// Reads `source` until cancelled, firing `rescan` [`EVENT_SETTLE`] after
/// the first AP event of a burst.
pub(crate) async fn listen<S: MessageSource>(
    mut source: S,
    rescan: Arc<Notify>,
    cancel: CancellationToken,
) {
    let mut due: Option<Instant> = None;
    let mut errors: u32 = 0;
    loop {
        let deadline = due.unwrap_or_else(Instant::now);
        tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            () = tokio::time::sleep_until(deadline), if due.is_some() => {
                due = None;
                tracing::debug!("AP bus uevent, rescanning");
                rescan.notify_one();
            }
            received = source.next_message() => match received {
                Ok(message) => {
                    errors = 0;
                    if message.as_deref().is_some_and(is_ap_change) {
                        due.get_or_insert_with(|| Instant::now() + EVENT_SETTLE);
                    }
                }
                Err(error) => {
                    errors += 1;
                    if errors == 1 {
                        tracing::warn!(%error, "receiving kernel uevents failed, rescanning in case events were lost");
                    }
                    if errors >= MAX_RECEIVE_ERRORS {
                        tracing::warn!(%error, errors, "kernel uevents keep failing, AP bus changes are seen at the APQN_CHECK_INTERVAL rescan only");
                        return;
                    }
                    // ENOBUFS: the socket buffer overflowed and events
                    // were dropped, so the bus may have changed unseen.
                    due.get_or_insert_with(|| Instant::now() + EVENT_SETTLE);
                }
            }
        }
    }
}

/// Reports whether `message` is a kernel uevent about the AP bus.
fn is_ap_change(message: &[u8]) -> bool {
    match UEvent::parse(message) {
        Ok(event) => match ap_change(&event) {
            Some(change) => {
                tracing::debug!(?change, seqnum = event.get("SEQNUM"), "AP bus uevent");
                true
            }
            None => false,
        },
        Err(error) => {
            tracing::trace!(%error, "ignoring netlink message that is not a kernel uevent");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixDatagram;

    /// A datagram socket replaces the netlink socket in tests, because it
    /// keeps the message boundaries as netlink does.
    impl MessageSource for UnixDatagram {
        async fn next_message(&mut self) -> io::Result<Option<Vec<u8>>> {
            let mut buffer = vec![0; 8192];
            let length = self.recv(&mut buffer).await?;
            buffer.truncate(length);
            Ok(Some(buffer))
        }
    }

    /// Builds a message laid out as `lib/kobject_uevent.c` sends it:
    /// `<action>@<devpath>\0` then `KEY=VALUE\0` entries.
    fn kernel_message(
        action: &str,
        devpath: &str,
        subsystem: &str,
        keys: &[&str],
        seqnum: u32,
    ) -> Vec<u8> {
        let mut text = format!(
            "{action}@{devpath}\0ACTION={action}\0DEVPATH={devpath}\0SUBSYSTEM={subsystem}\0"
        );
        for key in keys {
            text.push_str(key);
            text.push('\0');
        }
        text.push_str(&format!("SEQNUM={seqnum}\0"));
        text.into_bytes()
    }

    /// Builds the events of a CEX8P card in EP11 mode with two domains being
    /// hot plugged, in the kernel's order.
    fn card_add_burst() -> Vec<Vec<u8>> {
        let card = "/devices/ap/card03";
        vec![
            kernel_message(
                "add",
                card,
                "ap",
                &["DEV_TYPE=000E", "MODALIAS=ap:t0E", "MODE=ep11"],
                3001,
            ),
            kernel_message(
                "bind",
                card,
                "ap",
                &["DEV_TYPE=000E", "DRIVER=cex4card", "MODE=ep11"],
                3002,
            ),
            kernel_message(
                "add",
                &format!("{card}/03.0005"),
                "ap",
                &["DEV_TYPE=000E", "MODALIAS=ap:t0E", "MODE=ep11"],
                3003,
            ),
            kernel_message(
                "bind",
                &format!("{card}/03.0005"),
                "ap",
                &["DRIVER=cex4queue", "MODE=ep11"],
                3004,
            ),
            kernel_message(
                "add",
                &format!("{card}/03.0006"),
                "ap",
                &["DEV_TYPE=000E", "MODALIAS=ap:t0E", "MODE=ep11"],
                3005,
            ),
            kernel_message(
                "bind",
                &format!("{card}/03.0006"),
                "ap",
                &["DRIVER=cex4queue", "MODE=ep11"],
                3006,
            ),
        ]
    }

    /// Messages that must not cause a rescan: a zcrypt node, a network
    /// device, a udev daemon message and bytes that are no uevent.
    fn unrelated_messages() -> Vec<Vec<u8>> {
        let mut udev = b"libudev\0".to_vec();
        udev.extend_from_slice(&0xfeed_cafe_u32.to_be_bytes());
        udev.extend_from_slice(b"ACTION=add\0SUBSYSTEM=ap\0DEVPATH=/devices/ap/card03\0");
        vec![
            kernel_message(
                "add",
                "/devices/virtual/zcrypt/zcrypt-apqn-3-5-0",
                "zcrypt",
                &["MAJOR=241", "MINOR=3"],
                4001,
            ),
            kernel_message(
                "add",
                "/devices/virtual/net/veth1",
                "net",
                &["INTERFACE=veth1", "IFINDEX=9"],
                4002,
            ),
            udev,
            b"not a uevent".to_vec(),
        ]
    }

    struct Listener {
        sender: UnixDatagram,
        rescan: Arc<Notify>,
        cancel: CancellationToken,
        task: tokio::task::JoinHandle<()>,
    }

    fn start_listener() -> Listener {
        let (sender, receiver) = UnixDatagram::pair().expect("socket pair");
        let rescan = Arc::new(Notify::new());
        let cancel = CancellationToken::new();
        let task = tokio::spawn(listen(receiver, Arc::clone(&rescan), cancel.clone()));
        Listener {
            sender,
            rescan,
            cancel,
            task,
        }
    }

    async fn send_all(sender: &UnixDatagram, messages: &[Vec<u8>]) {
        for message in messages {
            sender.send(message).await.expect("send");
        }
    }

    async fn rescan_fired(rescan: &Notify, within: Duration) -> bool {
        tokio::time::timeout(within, rescan.notified())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn card_hot_plug_triggers_rescan() {
        let listener = start_listener();
        send_all(&listener.sender, &card_add_burst()).await;
        assert!(
            rescan_fired(&listener.rescan, Duration::from_secs(10)).await,
            "no rescan after a card add"
        );
        listener.cancel.cancel();
        listener.task.await.expect("listener ends");
    }

    #[tokio::test]
    async fn online_and_config_changes_trigger_rescan() {
        let listener = start_listener();
        let changes = [
            kernel_message(
                "change",
                "/devices/ap/card03/03.0005",
                "ap",
                &["ONLINE=0"],
                5001,
            ),
            kernel_message("change", "/devices/ap/card03", "ap", &["CONFIG=0"], 5002),
            kernel_message(
                "remove",
                "/devices/ap/card03/03.0005",
                "ap",
                &["MODE=ep11"],
                5003,
            ),
        ];
        for change in &changes {
            send_all(&listener.sender, std::slice::from_ref(change)).await;
            assert!(
                rescan_fired(&listener.rescan, Duration::from_secs(10)).await,
                "no rescan after {:?}",
                String::from_utf8_lossy(change)
            );
        }
        listener.cancel.cancel();
        listener.task.await.expect("listener ends");
    }

    #[tokio::test]
    async fn unrelated_messages_cause_no_rescan() {
        let listener = start_listener();
        send_all(&listener.sender, &unrelated_messages()).await;
        assert!(
            !rescan_fired(&listener.rescan, Duration::from_millis(500)).await,
            "rescan after messages that are not AP events"
        );

        // The listener is still reading: an AP event after them counts.
        let unplug = kernel_message("remove", "/devices/ap/card03", "ap", &[], 4003);
        send_all(&listener.sender, &[unplug]).await;
        assert!(rescan_fired(&listener.rescan, Duration::from_secs(10)).await);
        listener.cancel.cancel();
        listener.task.await.expect("listener ends");
    }

    #[test]
    fn classifies_recorded_messages() {
        for message in card_add_burst() {
            assert!(
                is_ap_change(&message),
                "{:?}",
                String::from_utf8_lossy(&message)
            );
        }
        for message in unrelated_messages() {
            assert!(
                !is_ap_change(&message),
                "{:?}",
                String::from_utf8_lossy(&message)
            );
        }
    }
}
