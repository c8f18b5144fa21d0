//! Real network partitions for tests that run as root: every node in its own network namespace
//! with its own address, joined by veth pairs to one bridge in the test's namespace (where the
//! test itself reaches every node). [`Net::cut`] separates one node from the others in both
//! directions with blackhole routes on both sides — packets between them are discarded at the IP
//! layer, while the test still reaches all of them — and [`Net::heal`] removes them. Everything
//! made is removed when the [`Net`] is dropped, also when the test fails.

use std::process::Command;

/// Why the network could not be made (not root, no `ip`, no namespaces in this kernel).
#[derive(Debug)]
pub struct Unavailable(pub String);

/// Bridges, namespaces and veth pairs made for one test.
pub struct Net {
    tag: String,
    subnet: u8,
    nodes: usize,
    cut: Vec<usize>,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("run ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Net {
    /// Makes a bridge and `nodes` namespaces, node `i` at [`Net::addr`]`(i)`.
    pub fn create(nodes: usize) -> Result<Net, Unavailable> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc_geteuid() } != 0 {
            return Err(Unavailable("network namespaces need root".into()));
        }
        let pid = std::process::id();
        let net = Net {
            // Interface names are at most 15 bytes: "sv" + tag + index.
            tag: format!("{:x}", pid % 0xfffff),
            subnet: (pid % 200) as u8 + 20,
            nodes,
            cut: Vec::new(),
        };
        net.build().map_err(Unavailable)?;
        Ok(net)
    }

    fn bridge(&self) -> String {
        format!("sb{}", self.tag)
    }

    /// The namespace node `i` runs in.
    pub fn ns(&self, i: usize) -> String {
        format!("scribe-{}-{i}", self.tag)
    }

    /// Node `i`'s address.
    pub fn addr(&self, i: usize) -> String {
        format!("10.199.{}.{}", self.subnet, 10 + i)
    }

    /// The command prefix that runs a program inside node `i`'s namespace.
    pub fn wrapper(&self, i: usize) -> Vec<String> {
        vec!["ip".into(), "netns".into(), "exec".into(), self.ns(i)]
    }

    fn build(&self) -> Result<(), String> {
        let br = self.bridge();
        // Leftovers of an earlier run with the same names (one killed before it cleaned up).
        for i in 0..self.nodes {
            let _ = ip(&["link", "del", &format!("sv{}{i}", self.tag)]);
            let _ = ip(&["netns", "del", &self.ns(i)]);
        }
        let _ = ip(&["link", "del", &br]);
        ip(&["link", "add", &br, "type", "bridge"])?;
        ip(&[
            "addr",
            "add",
            &format!("10.199.{}.1/24", self.subnet),
            "dev",
            &br,
        ])?;
        ip(&["link", "set", &br, "up"])?;
        for i in 0..self.nodes {
            let ns = self.ns(i);
            let veth = format!("sv{}{i}", self.tag);
            ip(&["netns", "add", &ns])?;
            ip(&[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            ip(&["link", "set", &veth, "master", &br, "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", self.addr(i)),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    fn routes(&self, i: usize, verb: &str) -> Result<(), String> {
        for j in (0..self.nodes).filter(|&j| j != i) {
            ip(&[
                "-n",
                &self.ns(i),
                "route",
                verb,
                "blackhole",
                &format!("{}/32", self.addr(j)),
            ])?;
            ip(&[
                "-n",
                &self.ns(j),
                "route",
                verb,
                "blackhole",
                &format!("{}/32", self.addr(i)),
            ])?;
        }
        Ok(())
    }

    /// Cuts node `i` off from every other node, both ways (the test still reaches it).
    pub fn cut(&mut self, i: usize) {
        self.routes(i, "add").expect("cut");
        self.cut.push(i);
    }

    /// Undoes [`Net::cut`] for node `i`.
    pub fn heal(&mut self, i: usize) {
        self.routes(i, "del").expect("heal");
        self.cut.retain(|&c| c != i);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Deleting one end of a veth pair deletes both; a namespace is freed by the kernel
        // later, so its end is not relied on.
        for i in 0..self.nodes {
            let _ = ip(&["link", "del", &format!("sv{}{i}", self.tag)]);
            let _ = ip(&["netns", "del", &self.ns(i)]);
        }
        let _ = ip(&["link", "del", &self.bridge()]);
    }
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}
