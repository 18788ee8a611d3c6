//! `na-cli ebpf loaded-ebpfdata`: every pod attachment with its direction,
//! the node's program and the maps it reaches.
use std::fmt::Write as _;

use na_agent::datapath::inventory::PodAttachment;

use crate::table::SEPARATOR;

/// The listing in the style of `aws-eks-na-cli ebpf loaded-ebpfdata`.
pub fn render(programs: &[PodAttachment]) -> String {
    let mut s = String::new();
    for p in programs {
        let _ = writeln!(s, "PinPath:  {}", p.pin_path);
        let _ = writeln!(s, "Pod Identifier : {}  Direction : {}", p.pod_id, p.direction);
        let _ = writeln!(s, "Prog ID:  {}", p.prog_id);
        if p.device.is_none() {
            let _ = writeln!(s, "Device:  gone (the pod's veth no longer exists: nothing is enforced for it)");
        }
        let _ = writeln!(s, "Associated Maps -> ");
        for m in &p.maps {
            let _ = writeln!(s, "Map Name:  {}", m.name);
            let _ = writeln!(s, "Map ID:  {}", m.id);
        }
        let _ = writeln!(s, "{SEPARATOR}");
    }
    if programs.is_empty() {
        s.push_str("No programs loaded\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use na_agent::datapath::inventory::MapRef;

    use super::*;

    #[test]
    fn renders_like_the_aws_tool() {
        let p = PodAttachment {
            pin_path: "/sys/fs/bpf/netpol/links/x_a_handle_ingress".into(),
            pod_id: "x_a".into(),
            direction: "ingress".into(),
            prog_id: 42,
            maps: vec![MapRef { name: "ingress_map".into(), id: 7 }],
            device: Some("eni0123456789a".into()),
        };
        let want = "PinPath:  /sys/fs/bpf/netpol/links/x_a_handle_ingress\n\
                    Pod Identifier : x_a  Direction : ingress\n\
                    Prog ID:  42\n\
                    Associated Maps -> \n\
                    Map Name:  ingress_map\n\
                    Map ID:  7\n";
        assert_eq!(render(std::slice::from_ref(&p)), format!("{want}{SEPARATOR}\n"));
        let gone = PodAttachment { device: None, ..p };
        assert!(render(&[gone]).contains("Prog ID:  42\nDevice:  gone"), "an attachment without its device is flagged");
        assert_eq!(render(&[]), "No programs loaded\n");
    }
}
