//! The first frame of every connection: versions are compared, and a
//! client of another protocol is refused with what to do (a shutdown
//! request is honoured across versions).

use log::warn;

use crate::daemon::clients::Clients;
use crate::daemon::effect::{Effect, Effects};
use crate::frame::RawFrame;
use crate::protocol::{self, Handshake, HANDSHAKE_MAGIC, PROTOCOL_VERSION};

pub fn handle(clients: &mut Clients, id: u64, f: RawFrame, fx: &mut Effects) {
    let hs = match protocol::decode::<Handshake>(&f.meta, "handshake") {
        Ok(h) if h.magic == HANDSHAKE_MAGIC => h,
        Ok(_) | Err(_) => {
            warn!("client {id}: first frame is not a weaver handshake; closing");
            return fx.push(Effect::Close { client: id, why: "sent no handshake" });
        }
    };
    let mut mine = Handshake::new(false);
    if hs.protocol != PROTOCOL_VERSION && !hs.shutdown {
        mine.refusal = format!(
            "this weaver daemon (pid {}, release {}, protocol {PROTOCOL_VERSION}) does not speak \
             protocol {} of client release {}. Run `weaver shutdown` (works across versions) and \
             retry; the next command starts a daemon of the client's release",
            std::process::id(),
            protocol::RELEASE,
            hs.protocol,
            hs.release
        );
        warn!(
            "client {id} (release {}, protocol {}) refused: protocol mismatch",
            hs.release, hs.protocol
        );
    }
    let refused = !mine.refusal.is_empty();
    clients.queue(id, &protocol::encode(&mine), Vec::new(), fx);
    if let Some(c) = clients.get_mut(id) {
        c.awaits_exit = hs.shutdown;
    }
    if !refused {
        clients.handshaken(id);
    }
    if refused {
        return clients.close_after_flush(id);
    }
    if hs.shutdown {
        fx.push(Effect::Stop { why: format!("shutdown requested by pid {}", hs.pid) });
    }
}
