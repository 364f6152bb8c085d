//! Expectations as `conntrack -L expect` and `conntrack -E expect` print them, in text and in
//! XML (libnetfilter_conntrack's formatters).
//!
//! An expectation is what a helper (FTP, SIP, TFTP, ...) tells conntrack to wait for: the tuple
//! a related connection will have, a mask saying which parts of it must match, and the master
//! connection that announced it. The text is one line: the timeout, `proto=`, the expected
//! tuple, `mask-src=`/`mask-dst=` and the mask's ports, `master-src=`/`master-dst=` and the
//! master's ports, then the zone, the flags, `class=`, `helper=` and `fn=` when the message
//! carries them. As for entries, a field is printed exactly when its attribute is there.

use std::fmt::Write as _;

use ctwasm_core::MessageKind;
use ctwasm_core::netlink::consts::{CTA_EXPECT_FN, CTA_EXPECT_HELP_NAME, NLA_TYPE_MASK};
use ctwasm_core::netlink::{ExpAttr, ExpMessage, TupleAttr};
use ctwasm_core::tuple::{Family, ipproto};

use super::{ConntrackOptions, TupleFields, ip_text, l4_text, protocol_name, tuple_fields};

/// What comes before the first expectation of an XML document.
pub const XML_PROLOGUE: &str = "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<expect>";
/// What closes it.
pub const XML_EPILOGUE: &str = "</expect>";

/// `NF_CT_EXPECT_*` flags, with the names conntrack prints.
const FLAGS: [(u32, &str); 3] = [(1, "PERMANENT"), (2, "INACTIVE"), (4, "USERSPACE")];

/// The line for one expectation (`kind` for an event, `None` for a table entry) read at
/// `ts_ns`; `-o timestamp` prefixes that time, `-o xml` gives the XML flow instead.
pub fn format_expect(
    msg: &ExpMessage,
    kind: Option<MessageKind>,
    ts_ns: u64,
    options: ConntrackOptions,
) -> String {
    if options.xml {
        return format_expect_xml(msg, kind);
    }
    let mut out = String::with_capacity(300);
    if options.timestamp {
        let _ = write!(
            out,
            "[{:08}.{:06}]\t",
            ts_ns / 1_000_000_000,
            ts_ns % 1_000_000_000 / 1000
        );
    }
    if let Some(kind) = kind {
        let _ = write!(out, "{:>9} ", format!("[{}]", kind.name()));
    }
    let family = Family::from_af(msg.family);
    let expected = nest(msg, Part::Expected);
    let _ = write!(
        out,
        "{} proto={} ",
        timeout(msg).unwrap_or(0),
        expected.proto
    );
    for (part, prefix) in [
        (Part::Expected, ""),
        (Part::Mask, "mask-"),
        (Part::Master, "master-"),
    ] {
        let t = nest(msg, part);
        if let Some(family) = family {
            let _ = write!(
                out,
                "{prefix}src={} {prefix}dst={} ",
                ip_text(family, &t.src),
                ip_text(family, &t.dst)
            );
        }
        // The mask's protocol is the expected one (the kernel sends the mask's as 0xff).
        l4_text(
            &mut out,
            &TupleFields {
                proto: expected.proto,
                ..t
            },
        );
    }
    if let Some(zone) = zone(msg) {
        let _ = write!(out, "zone={zone} ");
    }
    if let Some(flags) = flags(msg) {
        let names: Vec<&str> = FLAGS
            .iter()
            .filter(|(bit, _)| flags & bit != 0)
            .map(|(_, name)| *name)
            .collect();
        if !names.is_empty() {
            let _ = write!(out, "{} ", names.join(","));
        }
    }
    if let Some(class) = class(msg) {
        let _ = write!(out, "class={class} ");
    }
    if let Some(helper) = string(msg, CTA_EXPECT_HELP_NAME) {
        let _ = write!(out, "helper={helper} ");
    }
    if let Some(function) = string(msg, CTA_EXPECT_FN) {
        let _ = write!(out, "fn={function} ");
    }
    if out.ends_with(' ') {
        out.pop();
    }
    out
}

/// The `<flow>` element for one expectation.
fn format_expect_xml(msg: &ExpMessage, kind: Option<MessageKind>) -> String {
    let mut out = String::with_capacity(700);
    out.push_str(match kind {
        Some(MessageKind::New) => "<flow type=\"new\">",
        Some(MessageKind::Update) => "<flow type=\"update\">",
        Some(MessageKind::Destroy) => "<flow type=\"destroy\">",
        None => "<flow>",
    });
    let family = Family::from_af(msg.family);
    let parts = [
        ("expected", nest(msg, Part::Expected)),
        ("mask", nest(msg, Part::Mask)),
        ("master", nest(msg, Part::Master)),
    ];
    let _ = write!(
        out,
        "<layer3 protonum=\"{}\" protoname=\"{}\">",
        msg.family,
        family.map_or("unknown", Family::name)
    );
    for (tag, t) in &parts {
        let (src, dst) = family.map_or_else(Default::default, |f| {
            (ip_text(f, &t.src), ip_text(f, &t.dst))
        });
        let _ = write!(out, "<{tag}><src>{src}</src><dst>{dst}</dst></{tag}>");
    }
    let proto = parts[0].1.proto;
    let _ = write!(
        out,
        "</layer3><layer4 protonum=\"{proto}\" protoname=\"{}\">",
        protocol_name(proto)
    );
    if matches!(
        proto,
        ipproto::TCP | ipproto::UDP | ipproto::UDPLITE | ipproto::SCTP | ipproto::DCCP
    ) {
        for (tag, t) in &parts {
            let _ = write!(
                out,
                "<{tag}><sport>{}</sport><dport>{}</dport></{tag}>",
                t.sport, t.dport
            );
        }
    }
    out.push_str("</layer4><meta>");
    if let Some(helper) = string(msg, CTA_EXPECT_HELP_NAME) {
        let _ = write!(out, "<helper-name>{helper}</helper-name>");
    }
    if let Some(timeout) = timeout(msg) {
        let _ = write!(out, "<timeout>{timeout}</timeout>");
    }
    if let Some(class) = class(msg) {
        let _ = write!(out, "<class>{class}</class>");
    }
    if let Some(zone) = zone(msg) {
        let _ = write!(out, "<zone>{zone}</zone>");
    }
    out.push_str("</meta></flow>");
    out
}

#[derive(Clone, Copy)]
enum Part {
    Expected,
    Mask,
    Master,
}

fn nest(msg: &ExpMessage, part: Part) -> TupleFields {
    let attrs: Option<&Vec<TupleAttr>> = msg.attrs.iter().find_map(|a| match (a, part) {
        (ExpAttr::Tuple(t), Part::Expected)
        | (ExpAttr::Mask(t), Part::Mask)
        | (ExpAttr::Master(t), Part::Master) => Some(t),
        _ => None,
    });
    attrs.map(|a| tuple_fields(a)).unwrap_or_default()
}

fn timeout(msg: &ExpMessage) -> Option<u32> {
    msg.attrs.iter().find_map(|a| match a {
        ExpAttr::Timeout(v) => Some(*v),
        _ => None,
    })
}

fn zone(msg: &ExpMessage) -> Option<u16> {
    msg.attrs.iter().find_map(|a| match a {
        ExpAttr::Zone(v) => Some(*v),
        _ => None,
    })
}

fn flags(msg: &ExpMessage) -> Option<u32> {
    msg.attrs.iter().find_map(|a| match a {
        ExpAttr::Flags(v) => Some(*v),
        _ => None,
    })
}

fn class(msg: &ExpMessage) -> Option<u32> {
    msg.attrs.iter().find_map(|a| match a {
        ExpAttr::Class(v) => Some(*v),
        _ => None,
    })
}

/// A NUL-terminated string attribute the codec keeps raw (the helper's and function's names).
fn string(msg: &ExpMessage, kind: u16) -> Option<String> {
    msg.attrs.iter().find_map(|a| match a {
        ExpAttr::Other(raw) if raw.kind & NLA_TYPE_MASK == kind => {
            let bytes = raw.payload.split(|b| *b == 0).next().unwrap_or(&[]);
            Some(String::from_utf8_lossy(bytes).into_owned())
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    //! The expected lines were printed by conntrack v1.4.7 (`conntrack -L expect`, `-E expect`,
    //! `-o xml`) for the expectation Linux 6.18's FTP helper made from `PORT 127,0,0,1,200,10`
    //! on a control connection 127.0.0.1:45128 -> 127.0.0.1:2121.

    use super::*;
    use ctwasm_core::netlink::{NlHeader, RawAttr, tuple_attrs};
    use ctwasm_core::tuple::{Addr, L4Tuple, Tuple};

    fn tuple(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<TupleAttr> {
        tuple_attrs(&Tuple {
            family: Family::Ipv4,
            src: Addr::v4(src),
            dst: Addr::v4(dst),
            proto: ipproto::TCP,
            l4: L4Tuple::Ports {
                src: sport,
                dst: dport,
            },
        })
    }

    fn ftp() -> ExpMessage {
        let lo = [127, 0, 0, 1];
        ExpMessage {
            header: NlHeader {
                msg_type: 0x200,
                flags: 0x600,
                seq: 0,
                port_id: 0,
            },
            family: 2,
            version: 0,
            res_id: 0,
            attrs: vec![
                ExpAttr::Master(tuple(lo, lo, 45128, 2121)),
                ExpAttr::Tuple(tuple(lo, lo, 0, 51210)),
                ExpAttr::Mask(tuple([255; 4], [255; 4], 0, 65535)),
                ExpAttr::Timeout(299),
                ExpAttr::Id(1),
                ExpAttr::Flags(0),
                ExpAttr::Class(0),
                ExpAttr::Other(RawAttr {
                    kind: CTA_EXPECT_HELP_NAME,
                    payload: b"ftp\0".to_vec(),
                }),
            ],
        }
    }

    const LINE: &str = "299 proto=6 src=127.0.0.1 dst=127.0.0.1 sport=0 dport=51210 \
        mask-src=255.255.255.255 mask-dst=255.255.255.255 sport=0 dport=65535 \
        master-src=127.0.0.1 master-dst=127.0.0.1 sport=45128 dport=2121 class=0 helper=ftp";

    #[test]
    fn an_ftp_expectation_prints_as_conntrack_prints_it() {
        let o = |list: &str| ConntrackOptions::parse(list).unwrap();
        assert_eq!(format_expect(&ftp(), None, 0, o("")), LINE);
        assert_eq!(
            format_expect(&ftp(), Some(MessageKind::New), 0, o("")),
            format!("    [NEW] {LINE}")
        );
        assert_eq!(
            format_expect(&ftp(), None, 1_796_072_428_680_578_000, o("timestamp")),
            format!("[1796072428.680578]\t{LINE}")
        );
        // -o extended and id add nothing for expectations.
        assert_eq!(format_expect(&ftp(), None, 0, o("extended,id")), LINE);
        assert_eq!(
            format_expect(&ftp(), None, 0, o("xml")),
            "<flow><layer3 protonum=\"2\" protoname=\"ipv4\"><expected><src>127.0.0.1</src>\
             <dst>127.0.0.1</dst></expected><mask><src>255.255.255.255</src><dst>255.255.255.255\
             </dst></mask><master><src>127.0.0.1</src><dst>127.0.0.1</dst></master></layer3>\
             <layer4 protonum=\"6\" protoname=\"tcp\"><expected><sport>0</sport><dport>51210\
             </dport></expected><mask><sport>0</sport><dport>65535</dport></mask><master><sport>\
             45128</sport><dport>2121</dport></master></layer4><meta><helper-name>ftp\
             </helper-name><timeout>299</timeout><class>0</class></meta></flow>"
        );
    }

    #[test]
    fn flags_and_zone_print_when_present() {
        let mut m = ftp();
        m.attrs.retain(|a| !matches!(a, ExpAttr::Flags(_)));
        m.attrs.push(ExpAttr::Flags(1 | 4));
        m.attrs.push(ExpAttr::Zone(3));
        let line = format_expect(&m, None, 0, ConntrackOptions::default());
        assert!(
            line.ends_with("dport=2121 zone=3 PERMANENT,USERSPACE class=0 helper=ftp"),
            "{line}"
        );
        // A message without its tuples prints without panicking.
        let bare = ExpMessage {
            attrs: Vec::new(),
            ..ftp()
        };
        assert_eq!(
            format_expect(&bare, None, 0, ConntrackOptions::default()),
            "0 proto=0 src=0.0.0.0 dst=0.0.0.0 mask-src=0.0.0.0 mask-dst=0.0.0.0 \
             master-src=0.0.0.0 master-dst=0.0.0.0"
        );
    }
}
