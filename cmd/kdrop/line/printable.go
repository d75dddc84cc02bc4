package line

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Printable is s safe for a terminal: control characters (C0, DEL, C1:
// escape sequences, bells, carriage returns and newlines that would forge
// rows), bidirectional overrides and invalid UTF-8 are written as Go
// escapes (\x1b, \u202e), so a line from an agent, or a name in it, cannot
// move the cursor, retitle the window or pass for another row.
func Printable(s string) string {
	clean := true
	for _, r := range s {
		if unsafeRune(r) {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case unsafeRune(r) && r < 0x100:
			fmt.Fprintf(&b, `\x%02x`, r)
		case unsafeRune(r):
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			b.WriteString(s[i : i+n])
		}
		i += n
	}
	return b.String()
}

func unsafeRune(r rune) bool {
	return r == utf8.RuneError || (unicode.IsControl(r) && r != '\t') ||
		(r >= 0x202a && r <= 0x202e) || (r >= 0x2066 && r <= 0x2069) || r == 0x200e || r == 0x200f
}
