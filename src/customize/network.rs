//! `--network-static`, `--network-dhcp` and `--mac`: an interface's configuration written in
//! the format the guest already uses, found by [`detect`] from the paths it has.
//!
//! | backend | file | static | MAC |
//! |---|---|---|---|
//! | ifcfg (RHEL/CentOS ≤ 8) | `/etc/sysconfig/network-scripts/ifcfg-IFACE` | `BOOTPROTO=none`, `IPADDR`, `PREFIX`, `GATEWAY`, `DNS1..` | `HWADDR=` |
//! | NetworkManager keyfile (RHEL 9, Fedora) | `/etc/NetworkManager/system-connections/IFACE.nmconnection` (0600) | `[ipv4] method=manual`, `address1=ADDR/PREFIX,GW`, `dns=` | `[ethernet] mac-address=` |
//! | ifupdown (Debian) | `/etc/network/interfaces` | `iface IFACE inet static` stanza | `hwaddress ether` |
//! | netplan (Ubuntu) | `/etc/netplan/90-vdisk-IFACE.yaml` (0600) | `addresses`, `routes`, `nameservers` | `match: macaddress` + `set-name` |
//! | systemd-networkd | the `.network` file whose `[Match]` names IFACE, else `10-IFACE.network` | `[Network] Address=`, `Gateway=`, `DNS=` | `[Match] MACAddress=` |
//!
//! `--mac IFACE=MAC` says which NIC the configuration of IFACE is for: ifcfg's `HWADDR`,
//! NetworkManager's `mac-address`, netplan's and networkd's match bind the configuration to
//! the NIC with that address; ifupdown has no such binding, so there `hwaddress` gives the
//! interface that address. `random` draws a locally administered unicast address with
//! libvirt's and qemu's `52:54:00` prefix (only the last three bytes are random), so the
//! operator gives the same address to the VM's NIC.
//!
//! ifcfg files and keyfiles get a fresh connection `UUID` whenever they are rewritten, so
//! clones of one template do not share a NetworkManager connection id.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use vdisk_block::{Error, Result};

use super::ini::{self, Set};
use super::{shellvars, Family, GuestFiles, GuestOs, NewFile};

/// Checks an interface name as Linux accepts it (1–15 bytes, no '/', whitespace, ':' or
/// NUL; we also refuse ',' and '=' which our option syntax uses).
pub fn check_iface(name: &str) -> Result<String> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|c| c.is_ascii_graphic() && !b"/:,=\"'\\$`".contains(&c));
    if ok {
        Ok(name.to_string())
    } else {
        Err(Error::invalid(format!(
            "'{name}': not a valid interface name (1-15 characters, no '/', ':' or spaces)"
        )))
    }
}

/// An Ethernet address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// A random locally administered unicast address with the `52:54:00` prefix libvirt and
    /// qemu use; the last three bytes come from the OS's random source.
    pub fn random() -> Result<Mac> {
        let mut b = [0u8; 3];
        getrandom::fill(&mut b)
            .map_err(|e| Error::io("getrandom", None, std::io::Error::other(e.to_string())))?;
        Ok(Mac([0x52, 0x54, 0x00, b[0], b[1], b[2]]))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl FromStr for Mac {
    type Err = Error;
    fn from_str(s: &str) -> Result<Mac> {
        let bad = || {
            Error::invalid(format!(
                "'{s}': expected a MAC address like 52:54:00:12:34:56"
            ))
        };
        let parts: Vec<&str> = s.split([':', '-']).collect();
        if parts.len() != 6 {
            return Err(bad());
        }
        let mut m = [0u8; 6];
        for (i, p) in parts.iter().enumerate() {
            if p.len() != 2 {
                return Err(bad());
            }
            m[i] = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if m[0] & 1 != 0 {
            return Err(Error::invalid(format!(
                "'{s}': a multicast address cannot be a NIC's address"
            )));
        }
        if m == [0; 6] {
            return Err(Error::invalid(format!(
                "'{s}': the zero address is not a NIC's"
            )));
        }
        Ok(Mac(m))
    }
}

/// `--mac`'s value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MacSpec {
    /// This address.
    Fixed(Mac),
    /// A random `52:54:00` address, drawn when the operation runs.
    Random,
}

impl FromStr for MacSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<MacSpec> {
        if s == "random" {
            Ok(MacSpec::Random)
        } else {
            Ok(MacSpec::Fixed(s.parse()?))
        }
    }
}

/// `--network-static IFACE=ADDR/PREFIX[,gw=GW][,dns=DNS[,DNS..]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticNet {
    /// Interface name.
    pub iface: String,
    /// The address.
    pub addr: IpAddr,
    /// Its prefix length.
    pub prefix: u8,
    /// Default gateway.
    pub gateway: Option<IpAddr>,
    /// Name servers, in order.
    pub dns: Vec<IpAddr>,
}

impl FromStr for StaticNet {
    type Err = Error;
    fn from_str(s: &str) -> Result<StaticNet> {
        let ctx = |e: Error| Error::invalid(format!("--network-static '{s}': {}", e.message()));
        let (iface, rest) = s.split_once('=').ok_or_else(|| {
            ctx(Error::invalid(
                "expected IFACE=ADDR/PREFIX[,gw=GW][,dns=DNS,..]",
            ))
        })?;
        let iface = check_iface(iface).map_err(ctx)?;
        let mut items = rest.split(',');
        let (addr, prefix) =
            super::ops::parse_cidr(items.next().unwrap_or_default()).map_err(ctx)?;
        let mut gateway = None;
        let mut dns = Vec::new();
        let mut in_dns = false;
        let ip = |v: &str| {
            v.parse::<IpAddr>()
                .map_err(|_| ctx(Error::invalid(format!("'{v}' is not an IP address"))))
        };
        for it in items {
            if let Some(v) = it.strip_prefix("gw=") {
                gateway = Some(ip(v)?);
                in_dns = false;
            } else if let Some(v) = it.strip_prefix("dns=") {
                dns.push(ip(v)?);
                in_dns = true;
            } else if in_dns && !it.contains('=') {
                dns.push(ip(it)?);
            } else {
                return Err(ctx(Error::invalid(format!(
                    "unknown setting '{it}' (expected gw= or dns=)"
                ))));
            }
        }
        if let Some(g) = gateway {
            if g.is_ipv4() != addr.is_ipv4() {
                return Err(ctx(Error::invalid("the gateway's address family differs")));
            }
        }
        Ok(StaticNet {
            iface,
            addr,
            prefix,
            gateway,
            dns,
        })
    }
}

/// How an interface gets its address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Addressing {
    /// A static address.
    Static(StaticNet),
    /// DHCP.
    Dhcp,
}

/// What the network operations of one run ask for one interface (later operations override
/// earlier ones field by field).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NetConfig {
    /// Interface name.
    pub iface: String,
    /// Static or DHCP, or unchanged.
    pub addressing: Option<Addressing>,
    /// The NIC's address, or unchanged.
    pub mac: Option<Mac>,
}

/// The configuration formats we write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// RHEL/CentOS network-scripts ifcfg files.
    Ifcfg,
    /// NetworkManager keyfiles.
    NmKeyfile,
    /// Debian's ifupdown `/etc/network/interfaces`.
    Interfaces,
    /// netplan YAML.
    Netplan,
    /// systemd-networkd `.network` files.
    Networkd,
}

impl Backend {
    /// How the output names it.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Ifcfg => "ifcfg (network-scripts)",
            Backend::NmKeyfile => "NetworkManager keyfile",
            Backend::Interfaces => "ifupdown (/etc/network/interfaces)",
            Backend::Netplan => "netplan",
            Backend::Networkd => "systemd-networkd",
        }
    }
}

/// The guest paths (globs) whose existence [`detect`] looks at.
pub const PROBES: &[&str] = &[
    "/etc/netplan/*.yaml",
    "/etc/netplan/*.yml",
    "/etc/netplan",
    "/etc/sysconfig/network-scripts/ifcfg-*",
    "/etc/sysconfig/network-scripts",
    "/etc/NetworkManager/system-connections/*",
    "/etc/NetworkManager",
    "/etc/network/interfaces",
    "/etc/systemd/network/*.network",
    "/etc/systemd/network",
];

/// Chooses the format for `iface` from the probe paths that exist in the guest: a file that
/// already configures the interface wins (ifcfg-IFACE, a keyfile named for it), then netplan
/// (which renders the others on Ubuntu), then what the family uses: ifcfg where
/// network-scripts exists on RHEL ≤ 8, keyfiles on RHEL ≥ 9 and Fedora, ifupdown where
/// /etc/network/interfaces exists, networkd where /etc/systemd/network exists.
pub fn detect(existing: &[String], os: &GuestOs, iface: &str) -> Result<Backend> {
    let has = |p: &str| existing.iter().any(|e| e == p);
    let any = |prefix: &str, suffixes: &[&str]| {
        existing
            .iter()
            .any(|e| e.starts_with(prefix) && suffixes.iter().any(|s| e.ends_with(s)))
    };
    if has(&format!("/etc/sysconfig/network-scripts/ifcfg-{iface}")) {
        return Ok(Backend::Ifcfg);
    }
    if has(&format!(
        "/etc/NetworkManager/system-connections/{iface}.nmconnection"
    )) {
        return Ok(Backend::NmKeyfile);
    }
    if any("/etc/netplan/", &[".yaml", ".yml"]) {
        return Ok(Backend::Netplan);
    }
    let redhat_keyfiles = match os.distro.as_str() {
        "fedora" => os.major_version >= 33,
        _ => os.major_version >= 9,
    };
    if os.family() == Family::RedHat {
        if !redhat_keyfiles && has("/etc/sysconfig/network-scripts") {
            return Ok(Backend::Ifcfg);
        }
        if has("/etc/NetworkManager") {
            return Ok(Backend::NmKeyfile);
        }
        if has("/etc/sysconfig/network-scripts") {
            return Ok(Backend::Ifcfg);
        }
    }
    if has("/etc/network/interfaces") {
        return Ok(Backend::Interfaces);
    }
    if any("/etc/systemd/network/", &[".network"]) || has("/etc/systemd/network") {
        return Ok(Backend::Networkd);
    }
    if has("/etc/netplan") {
        return Ok(Backend::Netplan);
    }
    if has("/etc/NetworkManager") {
        return Ok(Backend::NmKeyfile);
    }
    Err(Error::unsupported(format!(
        "{iface}: found no network configuration this guest reads (network-scripts, \
         NetworkManager, /etc/network/interfaces, netplan or systemd-networkd)"
    )))
}

fn random_uuid() -> Result<String> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b)
        .map_err(|e| Error::io("getrandom", None, std::io::Error::other(e.to_string())))?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

/// The IPv4 netmask of a prefix length ("255.255.255.0" for 24).
pub fn netmask(prefix: u8) -> String {
    let m: u32 = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix.min(32)))
    };
    std::net::Ipv4Addr::from(m).to_string()
}

/// Rewrites (or writes, from None) an ifcfg file for `cfg`. `uuid` is the connection UUID
/// to record.
pub fn ifcfg(old: Option<&str>, cfg: &NetConfig, uuid: &str) -> String {
    let base = old.map(str::to_string).unwrap_or_else(|| {
        shellvars::edit(
            "",
            &[
                ("TYPE", Some("Ethernet")),
                ("NAME", Some(&cfg.iface)),
                ("DEVICE", Some(&cfg.iface)),
            ],
        )
    });
    let mut owned: Vec<(String, Option<String>)> = Vec::new();
    let set = |o: &mut Vec<(String, Option<String>)>, k: &str, v: Option<String>| {
        o.push((k.to_string(), v));
    };
    // Keys that other numbering schemes of the same settings use, removed so they cannot
    // contradict the new ones.
    let indexed = |o: &mut Vec<(String, Option<String>)>, text: &str, stems: &[&str]| {
        for l in super::lines(text) {
            if let Some(k) = shellvars::key_of(l) {
                if stems.iter().any(|s| {
                    k.strip_prefix(s)
                        .is_some_and(|n| !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()))
                }) && !o.iter().any(|(ok, _)| ok == k)
                {
                    o.push((k.to_string(), None));
                }
            }
        }
    };
    match &cfg.addressing {
        Some(Addressing::Static(s)) => {
            set(&mut owned, "BOOTPROTO", Some("none".into()));
            set(&mut owned, "ONBOOT", Some("yes".into()));
            if s.addr.is_ipv4() {
                set(&mut owned, "IPADDR", Some(s.addr.to_string()));
                set(&mut owned, "PREFIX", Some(s.prefix.to_string()));
                set(&mut owned, "NETMASK", None);
                set(&mut owned, "GATEWAY", s.gateway.map(|g| g.to_string()));
                indexed(
                    &mut owned,
                    &base,
                    &["IPADDR", "PREFIX", "NETMASK", "GATEWAY"],
                );
            } else {
                set(&mut owned, "IPV6INIT", Some("yes".into()));
                set(&mut owned, "IPV6_AUTOCONF", Some("no".into()));
                set(
                    &mut owned,
                    "IPV6ADDR",
                    Some(format!("{}/{}", s.addr, s.prefix)),
                );
                set(
                    &mut owned,
                    "IPV6_DEFAULTGW",
                    s.gateway.map(|g| g.to_string()),
                );
            }
            for (i, d) in s.dns.iter().enumerate() {
                set(&mut owned, &format!("DNS{}", i + 1), Some(d.to_string()));
            }
            indexed(&mut owned, &base, &["DNS"]);
        }
        Some(Addressing::Dhcp) => {
            set(&mut owned, "BOOTPROTO", Some("dhcp".into()));
            set(&mut owned, "ONBOOT", Some("yes".into()));
            for k in ["IPADDR", "PREFIX", "NETMASK", "GATEWAY"] {
                set(&mut owned, k, None);
            }
            indexed(
                &mut owned,
                &base,
                &["IPADDR", "PREFIX", "NETMASK", "GATEWAY", "DNS"],
            );
        }
        None => {}
    }
    if let Some(m) = cfg.mac {
        set(&mut owned, "HWADDR", Some(m.to_string().to_uppercase()));
        set(&mut owned, "MACADDR", None);
    }
    set(&mut owned, "UUID", Some(uuid.to_string()));
    let changes: Vec<(&str, Option<&str>)> = owned
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_deref()))
        .collect();
    shellvars::edit(&base, &changes)
}

/// Rewrites (or writes) a NetworkManager keyfile for `cfg`.
pub fn keyfile(old: Option<&str>, cfg: &NetConfig, uuid: &str) -> String {
    let base = old.map(str::to_string).unwrap_or_else(|| {
        ini::edit(
            "",
            &[
                Set::one("connection", "id", cfg.iface.clone()),
                Set::one("connection", "type", "ethernet"),
                Set::one("connection", "interface-name", cfg.iface.clone()),
                Set::one("ipv4", "method", "auto"),
                Set::one("ipv6", "method", "auto"),
            ],
        )
    });
    // Numbered address and route keys of the family being set, removed so none of the old
    // addresses survive beside the new one.
    let numbered = |fam: &str| -> Vec<String> {
        ini::keys(&base, fam)
            .into_iter()
            .filter(|k| {
                ["address", "addresses", "route", "routes"]
                    .iter()
                    .any(|stem| {
                        k.strip_prefix(stem)
                            .is_some_and(|n| n.bytes().all(|c| c.is_ascii_digit()))
                    })
            })
            .collect()
    };
    let fam = match &cfg.addressing {
        Some(Addressing::Static(s)) if !s.addr.is_ipv4() => "ipv6",
        _ => "ipv4",
    };
    let old_keys = if cfg.addressing.is_some() {
        numbered(fam)
    } else {
        Vec::new()
    };
    let mut sets = vec![Set::one("connection", "uuid", uuid)];
    for k in &old_keys {
        sets.push(Set::remove(fam, k));
    }
    match &cfg.addressing {
        Some(Addressing::Static(s)) => {
            sets.push(Set::one(fam, "method", "manual"));
            let mut a = format!("{}/{}", s.addr, s.prefix);
            if let Some(g) = s.gateway {
                a.push_str(&format!(",{g}"));
            }
            sets.push(Set::one(fam, "address1", a));
            sets.push(Set::remove(fam, "gateway"));
            if s.dns.is_empty() {
                sets.push(Set::remove(fam, "dns"));
            } else {
                let d: String = s.dns.iter().map(|d| format!("{d};")).collect();
                sets.push(Set::one(fam, "dns", d));
            }
        }
        Some(Addressing::Dhcp) => {
            sets.push(Set::one("ipv4", "method", "auto"));
            sets.push(Set::remove("ipv4", "gateway"));
            sets.push(Set::remove("ipv4", "dns"));
        }
        None => {}
    }
    if let Some(m) = cfg.mac {
        sets.push(Set::one(
            "ethernet",
            "mac-address",
            m.to_string().to_uppercase(),
        ));
    }
    ini::edit(&base, &sets)
}

/// The ifupdown stanza keywords that start a new stanza.
fn starts_stanza(line: &str) -> bool {
    let w = line.split_whitespace().next().unwrap_or_default();
    matches!(
        w,
        "iface" | "auto" | "mapping" | "source" | "source-directory"
    ) || w.starts_with("allow-")
}

/// Rewrites /etc/network/interfaces for `cfg`: the `iface IFACE inet`/`inet6` stanza for
/// the address family being set is replaced (options it had that we do not set, such as
/// `mtu`, are kept), and `auto IFACE` is added when no `auto`/`allow-hotplug` line names
/// the interface.
pub fn interfaces(old: &str, cfg: &NetConfig) -> String {
    let iface = cfg.iface.as_str();
    let fam = match &cfg.addressing {
        Some(Addressing::Static(s)) if !s.addr.is_ipv4() => "inet6",
        _ => "inet",
    };
    let ours = |l: &str| {
        let w: Vec<&str> = l.split_whitespace().collect();
        w.len() >= 3 && w[0] == "iface" && w[1] == iface && w[2] == fam
    };
    let lines: Vec<&str> = super::lines(old).collect();
    let mut out: Vec<String> = Vec::new();
    let mut kept_opts: Vec<String> = Vec::new();
    let mut old_method = None;
    let mut insert_at = None;
    let mut i = 0;
    while i < lines.len() {
        if ours(lines[i]) {
            old_method = lines[i].split_whitespace().nth(3).map(str::to_string);
            insert_at.get_or_insert(out.len());
            i += 1;
            while i < lines.len() && !starts_stanza(lines[i]) {
                let t = lines[i].trim();
                let k = t.split_whitespace().next().unwrap_or_default();
                let replaced = matches!(
                    k,
                    "address"
                        | "netmask"
                        | "gateway"
                        | "broadcast"
                        | "network"
                        | "dns-nameservers"
                        | "pointopoint"
                ) && cfg.addressing.is_some()
                    || k == "hwaddress" && cfg.mac.is_some();
                if !t.is_empty() && !t.starts_with('#') && !replaced {
                    kept_opts.push(t.to_string());
                }
                if t.is_empty() {
                    // Blank lines end our stanza's block in the output.
                    break;
                }
                i += 1;
            }
            continue;
        }
        out.push(lines[i].to_string());
        i += 1;
    }
    let method = match &cfg.addressing {
        Some(Addressing::Static(_)) => "static".to_string(),
        Some(Addressing::Dhcp) => "dhcp".to_string(),
        None => old_method.unwrap_or_else(|| "dhcp".into()),
    };
    let mut stanza = vec![format!("iface {iface} {fam} {method}")];
    if let Some(Addressing::Static(s)) = &cfg.addressing {
        stanza.push(format!("    address {}/{}", s.addr, s.prefix));
        if let Some(g) = s.gateway {
            stanza.push(format!("    gateway {g}"));
        }
        if !s.dns.is_empty() {
            let d: Vec<String> = s.dns.iter().map(|d| d.to_string()).collect();
            stanza.push(format!("    dns-nameservers {}", d.join(" ")));
        }
    }
    if let Some(m) = cfg.mac {
        stanza.push(format!("    hwaddress ether {m}"));
    }
    for o in kept_opts {
        stanza.push(format!("    {o}"));
    }
    let has_auto = lines.iter().any(|l| {
        let w: Vec<&str> = l.split_whitespace().collect();
        w.first()
            .is_some_and(|k| *k == "auto" || k.starts_with("allow-"))
            && w[1..].contains(&iface)
    });
    let at = match insert_at {
        Some(a) => a,
        None => {
            if out.last().is_some_and(|l| !l.trim().is_empty()) {
                out.push(String::new());
            }
            out.len()
        }
    };
    let mut block = Vec::new();
    if !has_auto {
        block.push(format!("auto {iface}"));
    }
    block.extend(stanza);
    out.splice(at..at, block);
    super::join_lines(out)
}

/// The netplan file we write for `cfg`, which netplan merges over the guest's other files
/// (read in name order, later keys overriding).
pub fn netplan(cfg: &NetConfig) -> String {
    let mut y =
        String::from("# Written by vdisk customize\nnetwork:\n  version: 2\n  ethernets:\n");
    y.push_str(&format!("    {}:\n", cfg.iface));
    if let Some(m) = cfg.mac {
        y.push_str(&format!(
            "      match:\n        macaddress: \"{m}\"\n      set-name: {}\n",
            cfg.iface
        ));
    }
    match &cfg.addressing {
        Some(Addressing::Static(s)) => {
            let v4 = s.addr.is_ipv4();
            y.push_str(&format!(
                "      dhcp4: false\n      dhcp6: false\n      addresses:\n        - \"{}/{}\"\n",
                s.addr, s.prefix
            ));
            if let Some(g) = s.gateway {
                let to = if v4 { "0.0.0.0/0" } else { "::/0" };
                y.push_str(&format!(
                    "      routes:\n        - to: \"{to}\"\n          via: \"{g}\"\n"
                ));
            }
            if !s.dns.is_empty() {
                y.push_str("      nameservers:\n        addresses:\n");
                for d in &s.dns {
                    y.push_str(&format!("          - \"{d}\"\n"));
                }
            }
        }
        Some(Addressing::Dhcp) => y.push_str("      dhcp4: true\n"),
        None => {}
    }
    y
}

/// The netplan file name we own for `iface`.
pub fn netplan_path(iface: &str) -> String {
    format!("/etc/netplan/90-vdisk-{iface}.yaml")
}

/// Rewrites (or writes) a systemd-networkd `.network` file for `cfg`.
pub fn networkd(old: Option<&str>, cfg: &NetConfig) -> String {
    let base = old
        .map(str::to_string)
        .unwrap_or_else(|| ini::edit("", &[Set::one("Match", "Name", cfg.iface.clone())]));
    let mut sets = Vec::new();
    match &cfg.addressing {
        Some(Addressing::Static(s)) => {
            sets.push(Set::remove("Network", "DHCP"));
            sets.push(Set::one(
                "Network",
                "Address",
                format!("{}/{}", s.addr, s.prefix),
            ));
            sets.push(Set {
                section: "Network",
                key: "Gateway",
                values: s.gateway.iter().map(|g| g.to_string()).collect(),
            });
            sets.push(Set {
                section: "Network",
                key: "DNS",
                values: s.dns.iter().map(|d| d.to_string()).collect(),
            });
        }
        Some(Addressing::Dhcp) => {
            sets.push(Set::one("Network", "DHCP", "yes"));
            for k in ["Address", "Gateway", "DNS"] {
                sets.push(Set::remove("Network", k));
            }
        }
        None => {}
    }
    if let Some(m) = cfg.mac {
        sets.push(Set::one("Match", "MACAddress", m.to_string()));
    }
    let mut text = ini::edit(&base, &sets);
    if old.is_none() && cfg.addressing.is_none() {
        text = ini::edit(&text, &[Set::one("Network", "DHCP", "yes")]);
    }
    text
}

fn read_text(g: &dyn GuestFiles, p: &str) -> Result<Option<String>> {
    super::read_text(g, p)
}

/// What [`configure`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Configured {
    /// The format chosen.
    pub backend: Backend,
    /// The files written.
    pub files: Vec<String>,
}

/// Writes `cfg` into the guest in the format [`detect`] picks.
pub fn configure(g: &mut dyn GuestFiles, os: &GuestOs, cfg: &NetConfig) -> Result<Configured> {
    let mut existing = Vec::new();
    for p in PROBES {
        existing.extend(super::glob::expand(g, p)?);
    }
    let backend = detect(&existing, os, &cfg.iface)?;
    let uuid = random_uuid()?;
    let path;
    match backend {
        Backend::Ifcfg => {
            path = format!("/etc/sysconfig/network-scripts/ifcfg-{}", cfg.iface);
            let old = read_text(g, &path)?;
            g.mkdir_p("/etc/sysconfig/network-scripts", NewFile::root(0o755))?;
            g.write(
                &path,
                ifcfg(old.as_deref(), cfg, &uuid).as_bytes(),
                NewFile::root(0o644),
            )?;
        }
        Backend::NmKeyfile => {
            path = format!(
                "/etc/NetworkManager/system-connections/{}.nmconnection",
                cfg.iface
            );
            let old = read_text(g, &path)?;
            g.mkdir_p(
                "/etc/NetworkManager/system-connections",
                NewFile::root(0o700),
            )?;
            // NetworkManager ignores keyfiles that others can read.
            g.write(
                &path,
                keyfile(old.as_deref(), cfg, &uuid).as_bytes(),
                NewFile::root(0o600),
            )?;
        }
        Backend::Interfaces => {
            path = "/etc/network/interfaces".to_string();
            let old = read_text(g, &path)?.unwrap_or_default();
            g.mkdir_p("/etc/network", NewFile::root(0o755))?;
            g.write(
                &path,
                interfaces(&old, cfg).as_bytes(),
                NewFile::root(0o644),
            )?;
        }
        Backend::Netplan => {
            path = netplan_path(&cfg.iface);
            g.mkdir_p("/etc/netplan", NewFile::root(0o755))?;
            g.write(&path, netplan(cfg).as_bytes(), NewFile::root(0o600))?;
        }
        Backend::Networkd => {
            let mut found = None;
            for f in existing
                .iter()
                .filter(|e| e.starts_with("/etc/systemd/network/") && e.ends_with(".network"))
            {
                if let Some(t) = read_text(g, f)? {
                    if ini::get(&t, "Match", "Name")
                        .iter()
                        .any(|v| v.split_whitespace().any(|n| n == cfg.iface))
                    {
                        found = Some((f.clone(), t));
                        break;
                    }
                }
            }
            let (p, old) = match found {
                Some((p, t)) => (p, Some(t)),
                None => (
                    format!("/etc/systemd/network/10-{}.network", cfg.iface),
                    None,
                ),
            };
            path = p;
            g.mkdir_p("/etc/systemd/network", NewFile::root(0o755))?;
            g.write(
                &path,
                networkd(old.as_deref(), cfg).as_bytes(),
                NewFile::root(0o644),
            )?;
        }
    }
    Ok(Configured {
        backend,
        files: vec![path],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::customize::mem::MemGuest;

    fn st(s: &str) -> StaticNet {
        s.parse().unwrap()
    }

    fn cfg(s: &str, mac: Option<&str>) -> NetConfig {
        let sn = st(s);
        NetConfig {
            iface: sn.iface.clone(),
            addressing: Some(Addressing::Static(sn)),
            mac: mac.map(|m| m.parse().unwrap()),
        }
    }

    #[test]
    fn parses_static() {
        let s = st("eth0=192.168.174.13/24,gw=192.168.174.1,dns=8.8.8.8,1.1.1.1");
        assert_eq!(s.prefix, 24);
        assert_eq!(s.dns.len(), 2);
        assert!("eth0=192.168.1.1/24,gw=fe80::1"
            .parse::<StaticNet>()
            .is_err());
        assert!("eth0=192.168.1.1/24,mtu=9000".parse::<StaticNet>().is_err());
        assert!("eth/0=192.168.1.1/24".parse::<StaticNet>().is_err());
        assert_eq!(netmask(24), "255.255.255.0");
        assert_eq!(netmask(0), "0.0.0.0");
        assert_eq!(netmask(32), "255.255.255.255");
    }

    #[test]
    fn macs() {
        let m: Mac = "52:54:00:AB:cd:0e".parse().unwrap();
        assert_eq!(m.to_string(), "52:54:00:ab:cd:0e");
        assert!("01:00:5e:00:00:01".parse::<Mac>().is_err());
        assert!("52:54:00:ab:cd".parse::<Mac>().is_err());
        let r = Mac::random().unwrap();
        assert_eq!(&r.0[..3], &[0x52, 0x54, 0x00]);
        assert_eq!(r.0[0] & 3, 2, "locally administered unicast");
    }

    #[test]
    fn ifcfg_centos7_rewrite() {
        let old = "TYPE=Ethernet\nBOOTPROTO=dhcp\nDEFROUTE=yes\nNAME=eth0\nUUID=5fb06bd0-0bb0-7ffb-45f1-d6edd65f3e03\nDEVICE=eth0\nONBOOT=no\nHWADDR=52:54:00:11:22:33\nIPADDR0=10.1.1.1\nDNS1=10.0.0.53\nDNS2=10.0.0.54\n";
        let new = ifcfg(
            Some(old),
            &cfg(
                "eth0=192.168.174.13/24,gw=192.168.174.1,dns=8.8.8.8",
                Some("52:54:00:aa:bb:cc"),
            ),
            "11111111-2222-4333-8444-555555555555",
        );
        assert_eq!(
            new,
            "TYPE=Ethernet\nBOOTPROTO=none\nDEFROUTE=yes\nNAME=eth0\nUUID=11111111-2222-4333-8444-555555555555\nDEVICE=eth0\nONBOOT=yes\nHWADDR=52:54:00:AA:BB:CC\nDNS1=8.8.8.8\nIPADDR=192.168.174.13\nPREFIX=24\nGATEWAY=192.168.174.1\n"
        );
        let dhcp = ifcfg(
            Some(&new),
            &NetConfig {
                iface: "eth0".into(),
                addressing: Some(Addressing::Dhcp),
                mac: None,
            },
            "u",
        );
        assert!(dhcp.contains("BOOTPROTO=dhcp\n"));
        for gone in ["IPADDR", "PREFIX", "GATEWAY", "DNS1"] {
            assert!(!dhcp.contains(gone), "{gone} in {dhcp}");
        }
        let fresh = ifcfg(None, &cfg("eth1=10.0.0.2/8", None), "u");
        assert_eq!(
            fresh,
            "TYPE=Ethernet\nNAME=eth1\nDEVICE=eth1\nBOOTPROTO=none\nONBOOT=yes\nIPADDR=10.0.0.2\nPREFIX=8\nUUID=u\n"
        );
    }

    #[test]
    fn keyfile_rewrite() {
        let new = keyfile(
            None,
            &cfg(
                "enp1s0=10.0.0.2/24,gw=10.0.0.1,dns=10.0.0.53,9.9.9.9",
                Some("52:54:00:00:00:01"),
            ),
            "u",
        );
        assert_eq!(
            new,
            "[connection]\nid=enp1s0\ntype=ethernet\ninterface-name=enp1s0\nuuid=u\n\n[ipv4]\nmethod=manual\naddress1=10.0.0.2/24,10.0.0.1\ndns=10.0.0.53;9.9.9.9;\n\n[ipv6]\nmethod=auto\n\n[ethernet]\nmac-address=52:54:00:00:00:01\n"
        );
        let again = keyfile(
            Some("[ipv4]\naddress1=1.2.3.4/8\naddress2=1.2.3.5/8\nmethod=manual\n"),
            &cfg("e=10.0.0.3/24", None),
            "v",
        );
        assert!(!again.contains("address2"), "{again}");
        assert!(again.contains("address1=10.0.0.3/24\n"), "{again}");
    }

    #[test]
    fn interfaces_stanza() {
        let old = "source /etc/network/interfaces.d/*\n\nauto lo\niface lo inet loopback\n\nallow-hotplug eth0\niface eth0 inet dhcp\n    mtu 1400\n\n# end\n";
        let new = interfaces(
            old,
            &cfg(
                "eth0=192.168.1.5/24,gw=192.168.1.1,dns=1.1.1.1,8.8.8.8",
                None,
            ),
        );
        assert_eq!(
            new,
            "source /etc/network/interfaces.d/*\n\nauto lo\niface lo inet loopback\n\nallow-hotplug eth0\niface eth0 inet static\n    address 192.168.1.5/24\n    gateway 192.168.1.1\n    dns-nameservers 1.1.1.1 8.8.8.8\n    mtu 1400\n\n# end\n"
        );
        let added = interfaces(
            "auto lo\niface lo inet loopback\n",
            &cfg("ens3=10.0.0.9/16", None),
        );
        assert_eq!(
            added,
            "auto lo\niface lo inet loopback\n\nauto ens3\niface ens3 inet static\n    address 10.0.0.9/16\n"
        );
    }

    #[test]
    fn netplan_and_networkd() {
        let c = cfg(
            "ens3=10.0.0.9/16,gw=10.0.0.1,dns=10.0.0.53",
            Some("52:54:00:00:00:02"),
        );
        assert_eq!(
            netplan(&c),
            "# Written by vdisk customize\nnetwork:\n  version: 2\n  ethernets:\n    ens3:\n      match:\n        macaddress: \"52:54:00:00:00:02\"\n      set-name: ens3\n      dhcp4: false\n      dhcp6: false\n      addresses:\n        - \"10.0.0.9/16\"\n      routes:\n        - to: \"0.0.0.0/0\"\n          via: \"10.0.0.1\"\n      nameservers:\n        addresses:\n          - \"10.0.0.53\"\n"
        );
        assert_eq!(
            networkd(Some("[Match]\nName=ens3\n\n[Network]\nDHCP=yes\n"), &c),
            "[Match]\nName=ens3\nMACAddress=52:54:00:00:00:02\n\n[Network]\nAddress=10.0.0.9/16\nGateway=10.0.0.1\nDNS=10.0.0.53\n"
        );
    }

    fn os(d: &str, v: u32) -> GuestOs {
        GuestOs {
            os_type: "linux".into(),
            distro: d.into(),
            major_version: v,
            package_management: None,
        }
    }

    #[test]
    fn detection() {
        let v = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let c7 = v(&[
            "/etc/sysconfig/network-scripts",
            "/etc/sysconfig/network-scripts/ifcfg-eth0",
            "/etc/NetworkManager",
        ]);
        assert_eq!(
            detect(&c7, &os("centos", 7), "eth0").unwrap(),
            Backend::Ifcfg
        );
        assert_eq!(
            detect(&c7, &os("centos", 7), "eth1").unwrap(),
            Backend::Ifcfg
        );
        let r9 = v(&["/etc/sysconfig/network-scripts", "/etc/NetworkManager"]);
        assert_eq!(
            detect(&r9, &os("rocky", 9), "eth0").unwrap(),
            Backend::NmKeyfile
        );
        let deb = v(&["/etc/network/interfaces", "/etc/systemd/network"]);
        assert_eq!(
            detect(&deb, &os("debian", 12), "ens3").unwrap(),
            Backend::Interfaces
        );
        let ubu = v(&[
            "/etc/netplan",
            "/etc/netplan/50-cloud-init.yaml",
            "/etc/network/interfaces",
        ]);
        assert_eq!(
            detect(&ubu, &os("ubuntu", 22), "ens3").unwrap(),
            Backend::Netplan
        );
        let nd = v(&[
            "/etc/systemd/network",
            "/etc/systemd/network/20-wired.network",
        ]);
        assert_eq!(
            detect(&nd, &os("archlinux", 0), "eth0").unwrap(),
            Backend::Networkd
        );
        assert!(detect(&[], &os("debian", 12), "eth0").is_err());
    }

    #[test]
    fn configure_writes_the_guests_format() {
        let mut g = MemGuest::new();
        g.add_file(
            "/etc/sysconfig/network-scripts/ifcfg-eth0",
            b"DEVICE=eth0\nBOOTPROTO=dhcp\nUUID=old\n",
            0o644,
        );
        let c = configure(&mut g, &os("centos", 7), &cfg("eth0=10.0.0.5/24", None)).unwrap();
        assert_eq!(c.backend, Backend::Ifcfg);
        let t = g.text("/etc/sysconfig/network-scripts/ifcfg-eth0").unwrap();
        assert!(
            t.contains("IPADDR=10.0.0.5\n") && !t.contains("UUID=old"),
            "{t}"
        );

        let mut g = MemGuest::new();
        g.add_dir("/etc/NetworkManager/system-connections", 0o700);
        let c = configure(&mut g, &os("rhel", 9), &cfg("eth0=10.0.0.5/24", None)).unwrap();
        assert_eq!(c.backend, Backend::NmKeyfile);
        let p = "/etc/NetworkManager/system-connections/eth0.nmconnection";
        assert_eq!(g.stat(p, true).unwrap().unwrap().mode, 0o600);
    }
}
