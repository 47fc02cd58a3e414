//! DEL: idempotent. Succeeds when the netns, the interface or the record is already gone.

use portgroup::attachment::Record;
use portgroup::netlink::Netlink;
use portgroup::paths::RunDir;
use portgroup::Error;
use portgroup_plugin::cni::netconf::TeardownConf;

use crate::env::Env;
use crate::teardown::Teardown;

pub async fn del(env: &Env, stdin: &[u8]) -> Result<(), Error> {
    let conf = TeardownConf::parse(stdin)?;
    let (container_id, ifname) = env.attachment()?;
    let run = RunDir::from_env();
    let nl = Netlink::connect().map_err(|e| Error::system("opening netlink", e))?;
    // The record remembers the IPAM section if the config no longer has one.
    let recorded_ipam = Record::find(&run.attachments_dir(), container_id, ifname)
        .ok()
        .flatten()
        .and_then(|r| r.ipam);
    Teardown {
        container_id,
        ifname,
        ipam: conf.ipam.as_ref().or(recorded_ipam.as_ref()),
        config: stdin,
        cni_path: &env.path,
        foreign: false,
    }
    .run(&nl, &run)
    .await
}
