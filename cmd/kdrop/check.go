package main

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"unsafe"

	"github.com/google/nftables"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/kdrop/kdrop/tracer"
)

func checkCmd() *cobra.Command {
	var attach string
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Say what this kernel supports and whether kdrop can run",
		Long: `Check loads and attaches every hook once, then detaches, and prints the
kernel's BTF, each hook with its attach mode (or why it is missing) and the
number of drop reasons the kernel names. It exits non-zero when kdrop cannot
run here. It also says whether the rule behind NETFILTER_DROP drops can be
named (--rules): nftables rules listed over netlink, iptables-legacy's
ip_tables and ip6_tables present and readable (CAP_NET_ADMIN), other
namespaces entered (CAP_SYS_ADMIN); that part is optional and never fails
the check.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			modes, err := tracer.ParseModes(attach)
			if err != nil {
				return fmt.Errorf("--attach: %w", err)
			}
			return runCheck(modes)
		},
	}
	cmd.Flags().StringVar(&attach, "attach", "auto", "attach modes to try (see kdrop watch --help)")
	return cmd
}

func runCheck(modes []tracer.Mode) error {
	var u unix.Utsname
	_ = unix.Uname(&u)
	fmt.Printf("kernel       %s\n", unix.ByteSliceToString(u.Release[:]))
	if _, err := os.Stat("/sys/kernel/btf/vmlinux"); err != nil {
		fmt.Println("BTF          MISSING")
		return fmt.Errorf("kernel has no BTF (/sys/kernel/btf/vmlinux): kdrop needs CONFIG_DEBUG_INFO_BTF=y")
	}
	fmt.Println("BTF          /sys/kernel/btf/vmlinux")
	if err := tracer.CheckPrivileges(); err != nil {
		fmt.Println("privileges   INSUFFICIENT")
		return err
	}
	fmt.Println("privileges   ok")
	t, err := tracer.New(tracer.Options{Modes: modes})
	if err != nil {
		return err
	}
	defer t.Close()
	if n := t.Reasons.Len(); n > 0 {
		fmt.Printf("drop reasons %d (enum skb_drop_reason)\n", n)
	} else {
		fmt.Println("drop reasons none: kernel older than 5.17; drops show reason \"unknown\" and their location")
	}
	if err := t.Symbols.Err(); err != nil {
		fmt.Printf("kallsyms     UNREADABLE: %v (drop locations show as addresses)\n", err)
	}
	fmt.Println("hooks:")
	missing := []string{}
	for _, h := range t.Hooks() {
		fmt.Println("  " + h.String())
		if h.Mode == "" {
			missing = append(missing, h.Hook)
		}
	}
	if len(missing) > 0 {
		fmt.Printf("kdrop runs without: %s\n", strings.Join(missing, ", "))
	} else {
		fmt.Println("kdrop can run with every hook")
	}
	checkRules()
	return nil
}

// checkRules says whether --rules can name the rule behind NETFILTER_DROP
// drops, without traffic: whether nftables (which holds iptables-nft's
// rules too) can be listed over NETLINK_NETFILTER, whether the kernel has
// iptables-legacy's ip_tables and ip6_tables and they can be read, and
// whether other network namespaces can be entered. In kdrop's own
// namespace; rule reading is optional, so nothing here fails the check.
func checkRules() {
	fmt.Println("netfilter rules (--rules: naming the rule behind NETFILTER_DROP):")
	if c, err := nftables.New(); err != nil {
		fmt.Printf("  nftables          CANNOT OPEN NETLINK_NETFILTER: %v\n", err)
	} else if tables, err := c.ListTables(); err != nil {
		why := ""
		if errors.Is(err, unix.EPERM) || strings.Contains(err.Error(), "operation not permitted") {
			why = " (needs CAP_NET_ADMIN)"
		}
		fmt.Printf("  nftables          CANNOT LIST TABLES: %v%s\n", err, why)
	} else {
		fmt.Printf("  nftables          ok: %d tables listed over netlink (native nft and iptables-nft rules)\n", len(tables))
	}
	for _, f := range []struct {
		name, names   string
		domain, level int
	}{
		{"iptables-legacy", "/proc/thread-self/net/ip_tables_names", unix.AF_INET, unix.SOL_IP},
		{"ip6tables-legacy", "/proc/thread-self/net/ip6_tables_names", unix.AF_INET6, unix.SOL_IPV6},
	} {
		fmt.Printf("  %-17s %s\n", f.name, checkLegacy(f.names, f.domain, f.level))
	}
	if capable(unix.CAP_SYS_ADMIN) {
		fmt.Println("  other namespaces  ok: CAP_SYS_ADMIN (setns), pods' rules can be read")
	} else {
		fmt.Println("  other namespaces  NO CAP_SYS_ADMIN: only this namespace's rules can be read")
	}
}

// checkLegacy says whether one ip_tables family is in the kernel and its
// tables can be read (getsockopt IPT_SO_GET_INFO on a raw socket, as
// --rules reads them).
func checkLegacy(names string, domain, level int) string {
	b, err := os.ReadFile(names)
	if err != nil {
		return "not in this kernel (not built or module not loaded): no legacy rules can exist, none to read"
	}
	tables := strings.Fields(string(b))
	if len(tables) == 0 {
		return "present, no tables loaded"
	}
	fd, err := unix.Socket(domain, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
	if err != nil {
		return fmt.Sprintf("CANNOT READ: raw socket: %v (needs CAP_NET_RAW and CAP_NET_ADMIN)", err)
	}
	defer unix.Close(fd)
	const soGetInfo, getinfoSize = 64, 84 // IPT_SO_GET_INFO, sizeof(struct ipt_getinfo)
	info := make([]byte, getinfoSize)
	copy(info, tables[0])
	n := uint32(len(info))
	if _, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), uintptr(level), soGetInfo,
		uintptr(unsafe.Pointer(&info[0])), uintptr(unsafe.Pointer(&n)), 0); e != 0 {
		why := ""
		if e == unix.EPERM {
			why = " (needs CAP_NET_ADMIN)"
		}
		return fmt.Sprintf("CANNOT READ table %s: %v%s", tables[0], e, why)
	}
	return fmt.Sprintf("ok: read (tables %s)", strings.Join(tables, ", "))
}

// capable says whether this process has capability c in effect.
func capable(c int) bool {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return false
	}
	return data[c/32].Effective&(1<<(c%32)) != 0
}

func reasonsCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "reasons",
		Short: "List the drop reasons this kernel names (for --reason)",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			r, err := tracer.LoadReasons(nil)
			if err != nil {
				return err
			}
			if r.Len() == 0 {
				fmt.Println("this kernel has no drop reasons (enum skb_drop_reason is new in 5.17)")
				return nil
			}
			for _, n := range r.Names() {
				v, _ := r.Lookup(n)
				note := ""
				switch {
				case tracer.IsBenign(n):
					note = "  (hidden unless --include-benign)"
				case n == "NOT_SPECIFIED":
					note = "  (hidden at " + strings.Join(tracer.BenignPlaces, ", ") + " unless --include-benign)"
				}
				fmt.Printf("%4d  %s%s\n", v, n, note)
			}
			return nil
		},
	}
}
