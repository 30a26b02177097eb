//! Shared steps of the adversarial tests: a node with the fake kernel,
//! an agent serving set `blue` to the simulated kubelet, and waits for
//! the list of blue.

#![allow(dead_code)]

use cex_sim::kernel::{FakeKernel, RunningKernel};
use cex_sim::kubelet::FakeKubelet;

use crate::agent_support::{first_message_of_new_stream, Agent, Node, BLUE, WAIT};

/// Starts the fake kernel on `node` so that zcrypt nodes appear.
pub fn kernel(node: &Node) -> RunningKernel {
    FakeKernel::new(node.root.path())
        .expect("fake kernel")
        .start()
        .expect("kernel runs")
}

/// Starts the simulated kubelet and the agent with `extra` environment,
/// and waits for the first list of blue.
pub async fn started(node: &Node, extra: &[(&str, &str)]) -> (FakeKubelet, Agent) {
    let kubelet = FakeKubelet::start(node.plugin_dir())
        .await
        .expect("kubelet");
    let agent = node.spawn_agent(extra);
    first_message_of_new_stream(&kubelet, BLUE, 0)
        .await
        .expect("first list of blue");
    (kubelet, agent)
}

/// Waits until the last list of blue has `count` Healthy devices.
pub async fn blue_healthy(kubelet: &FakeKubelet, count: usize) -> bool {
    kubelet
        .wait_for(WAIT, |recorded| {
            let healthy = recorded.messages(BLUE).last()?.healthy();
            (healthy == count).then_some(())
        })
        .await
        .is_some()
}
