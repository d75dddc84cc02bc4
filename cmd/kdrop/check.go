package main

import (
	"fmt"
	"os"
	"strings"

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
run here.`,
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
	return nil
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
