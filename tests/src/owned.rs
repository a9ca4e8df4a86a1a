//! Whether a listening TCP port belongs to a process of ours: a private
//! server a test starts must be the one answering on its port (not another
//! that happened to take it first) before the test trusts it. Read from
//! `/proc`: the listening socket's inode for the port, and the process's
//! open file descriptors.

use std::path::Path;

/// The inodes of the sockets listening on `port` (IPv4 and IPv6).
fn listening_inodes(port: u16) -> Vec<String> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // local_address is ADDR:PORT in hex; st 0A is LISTEN.
            let local_port =
                cols.get(1).and_then(|a| a.rsplit(':').next()).and_then(|p| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port)
                && cols.get(3) == Some(&"0A")
                && let Some(inode) = cols.get(9)
            {
                inodes.push((*inode).to_string());
            }
        }
    }
    inodes
}

/// True when process `pid` holds a socket listening on `port`.
pub fn pid_listens_on(pid: u32, port: u16) -> bool {
    let inodes = listening_inodes(port);
    if inodes.is_empty() {
        return false;
    }
    let Ok(fds) = std::fs::read_dir(Path::new("/proc").join(pid.to_string()).join("fd")) else { return false };
    fds.flatten().filter_map(|fd| std::fs::read_link(fd.path()).ok()).any(|target| {
        let target = target.to_string_lossy();
        inodes.iter().any(|inode| target == format!("socket:[{inode}]"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_listener_is_ours_and_a_free_port_is_nobodys() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        assert!(pid_listens_on(std::process::id(), port));
        drop(listener);
        assert!(!pid_listens_on(std::process::id(), port));
    }
}
