package grub

import (
	"fmt"
	"strings"
)

// The scanner and parser below understand the GRUB script syntax that
// grub-mkconfig writes: words with '...' and "..." quoting and backslash
// escapes, $name and ${name}, comments, commands ended by newlines or ';',
// brace blocks (menuentry, submenu, function), if/elif/else/fi and
// for/while/until ... do ... done. They build a tree; interp.go decides
// what of it vio follows.

type tokKind int

const (
	tWord tokKind = iota
	tSep
	tLBrace
	tRBrace
)

// seg is part of a word: literal text, or a variable to expand.
type seg struct {
	text   string
	isVar  bool
	quoted bool // inside "...": no field splitting
}

type token struct {
	kind tokKind
	segs []seg
	line int
}

// literal returns the word's text if it has no variables.
func (t token) literal() (string, bool) {
	var b strings.Builder
	for _, s := range t.segs {
		if s.isVar {
			return "", false
		}
		b.WriteString(s.text)
	}
	return b.String(), true
}

// keyword returns the word as a reserved word (unquoted literal), or "".
func (t token) keyword() string {
	if t.kind != tWord || len(t.segs) != 1 || t.segs[0].isVar || t.segs[0].quoted {
		return ""
	}
	return t.segs[0].text
}

func isNameByte(c byte, first bool) bool {
	return c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || !first && c >= '0' && c <= '9'
}

// scan splits src into tokens.
func scan(src []byte) ([]token, error) {
	var toks []token
	line := 1
	i := 0
	for i < len(src) {
		c := src[i]
		switch {
		case c == '\n':
			toks = append(toks, token{kind: tSep, line: line})
			line++
			i++
			continue
		case c == ';':
			toks = append(toks, token{kind: tSep, line: line})
			i++
			continue
		case c == ' ' || c == '\t' || c == '\r':
			i++
			continue
		case c == '#':
			for i < len(src) && src[i] != '\n' {
				i++
			}
			continue
		}
		// A word.
		var segs []seg
		var lit strings.Builder
		litQuoted := false
		flush := func() {
			if lit.Len() > 0 {
				segs = append(segs, seg{text: lit.String(), quoted: litQuoted})
				lit.Reset()
			}
		}
		start := line
		anyQuote := false
	word:
		for i < len(src) {
			c := src[i]
			switch c {
			case ' ', '\t', '\r', '\n', ';':
				break word
			case '\\':
				if i+1 < len(src) {
					if src[i+1] == '\n' {
						line++
					} else {
						lit.WriteByte(src[i+1])
					}
					i += 2
					continue
				}
				i++
			case '\'':
				flush()
				end := indexFrom(src, i+1, '\'')
				if end < 0 {
					return nil, fmt.Errorf("line %d: unterminated single quote", start)
				}
				line += strings.Count(string(src[i+1:end]), "\n")
				segs = append(segs, seg{text: string(src[i+1 : end]), quoted: true})
				anyQuote = true
				i = end + 1
			case '"':
				flush()
				anyQuote = true
				i++
				closed := false
				for i < len(src) {
					d := src[i]
					if d == '"' {
						i++
						closed = true
						break
					}
					if d == '\\' && i+1 < len(src) && strings.IndexByte("\\\"$\n", src[i+1]) >= 0 {
						if src[i+1] != '\n' {
							lit.WriteByte(src[i+1])
						}
						i += 2
						continue
					}
					if d == '$' {
						name, n, err := varName(src[i:])
						if err != nil {
							return nil, fmt.Errorf("line %d: %w", line, err)
						}
						if n > 0 {
							litQuoted = true
							flush()
							segs = append(segs, seg{text: name, isVar: true, quoted: true})
							i += n
							continue
						}
					}
					if d == '\n' {
						line++
					}
					lit.WriteByte(d)
					i++
				}
				if !closed {
					return nil, fmt.Errorf("line %d: unterminated double quote", start)
				}
				litQuoted = true
				flush()
				litQuoted = false
			case '$':
				name, n, err := varName(src[i:])
				if err != nil {
					return nil, fmt.Errorf("line %d: %w", line, err)
				}
				if n == 0 {
					lit.WriteByte('$')
					i++
					continue
				}
				flush()
				segs = append(segs, seg{text: name, isVar: true})
				i += n
			default:
				lit.WriteByte(c)
				i++
			}
		}
		flush()
		t := token{kind: tWord, segs: segs, line: start}
		if !anyQuote && len(segs) == 1 && !segs[0].isVar {
			switch segs[0].text {
			case "{":
				t.kind = tLBrace
			case "}":
				t.kind = tRBrace
			}
		}
		if len(segs) == 0 && anyQuote {
			t.segs = []seg{{quoted: true}} // an empty quoted word is still a word
		}
		toks = append(toks, t)
	}
	return toks, nil
}

func indexFrom(b []byte, from int, c byte) int {
	for i := from; i < len(b); i++ {
		if b[i] == c {
			return i
		}
	}
	return -1
}

// varName reads $name, ${name}, $1 or $? at the start of b; n is 0 when
// the '$' starts no variable.
func varName(b []byte) (name string, n int, err error) {
	if len(b) < 2 {
		return "", 0, nil
	}
	if b[1] == '{' {
		end := indexFrom(b, 2, '}')
		if end < 0 {
			return "", 0, fmt.Errorf("unterminated ${")
		}
		return string(b[2:end]), end + 1, nil
	}
	if b[1] == '?' || b[1] == '#' || b[1] >= '0' && b[1] <= '9' {
		return string(b[1:2]), 2, nil
	}
	j := 1
	for j < len(b) && isNameByte(b[j], j == 1) {
		j++
	}
	if j == 1 {
		return "", 0, nil
	}
	return string(b[1:j]), j, nil
}

// node is a parsed command or compound command.
type node struct {
	kind  nodeKind
	words []token // the command, or a block's header (menuentry 'Title' --id x)
	body  []node  // block body; if/loop: the then branch
	conds [][]node
	elifs [][]node // bodies of elif branches, parallel to conds[1:]
	els   []node
	hasEl bool
	line  int
}

type nodeKind int

const (
	nCmd nodeKind = iota
	nBlock
	nIf
	nLoop
)

// Limits on what a hostile grub.cfg can make the parser do.
const (
	maxConfig = 4 << 20
	maxDepth  = 32
)

type parser struct {
	toks  []token
	pos   int
	depth int
}

func parse(src []byte) ([]node, error) {
	if len(src) > maxConfig {
		return nil, fmt.Errorf("grub.cfg is %d bytes, more than the %d vio reads", len(src), maxConfig)
	}
	toks, err := scan(src)
	if err != nil {
		return nil, err
	}
	p := &parser{toks: toks}
	nodes, term, err := p.list(nil)
	if err != nil {
		return nil, err
	}
	if term != "" {
		return nil, fmt.Errorf("line %d: unexpected %q", p.line(), term)
	}
	return nodes, nil
}

func (p *parser) line() int {
	if p.pos < len(p.toks) {
		return p.toks[p.pos].line
	}
	if len(p.toks) > 0 {
		return p.toks[len(p.toks)-1].line
	}
	return 1
}

// list parses commands until EOF or one of terms in command position,
// which it consumes and returns ("}" for a closing brace).
func (p *parser) list(terms []string) ([]node, string, error) {
	p.depth++
	defer func() { p.depth-- }()
	if p.depth > maxDepth {
		return nil, "", fmt.Errorf("line %d: blocks nested deeper than %d", p.line(), maxDepth)
	}
	var nodes []node
	for {
		for p.pos < len(p.toks) && p.toks[p.pos].kind == tSep {
			p.pos++
		}
		if p.pos >= len(p.toks) {
			return nodes, "", nil
		}
		t := p.toks[p.pos]
		switch t.kind {
		case tRBrace:
			p.pos++
			if has(terms, "}") {
				return nodes, "}", nil
			}
			return nil, "", fmt.Errorf("line %d: unexpected }", t.line)
		case tLBrace:
			return nil, "", fmt.Errorf("line %d: unexpected {", t.line)
		}
		kw := t.keyword()
		if kw != "" && has(terms, kw) {
			p.pos++
			return nodes, kw, nil
		}
		var n node
		var err error
		switch kw {
		case "if":
			n, err = p.ifNode()
		case "for", "while", "until":
			n, err = p.loop()
		case "menuentry", "submenu", "function":
			n, err = p.block()
		case "then", "else", "elif", "fi", "do", "done":
			return nil, "", fmt.Errorf("line %d: unexpected %q", t.line, kw)
		default:
			n = p.command()
		}
		if err != nil {
			return nil, "", err
		}
		nodes = append(nodes, n)
	}
}

func has(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

// command reads words up to a separator or brace.
func (p *parser) command() node {
	n := node{kind: nCmd, line: p.toks[p.pos].line}
	for p.pos < len(p.toks) && p.toks[p.pos].kind == tWord {
		n.words = append(n.words, p.toks[p.pos])
		p.pos++
	}
	return n
}

func (p *parser) block() (node, error) {
	n := node{kind: nBlock, line: p.toks[p.pos].line}
	for p.pos < len(p.toks) && p.toks[p.pos].kind == tWord {
		n.words = append(n.words, p.toks[p.pos])
		p.pos++
	}
	// The brace may follow on the next line (function f\n{).
	for p.pos < len(p.toks) && p.toks[p.pos].kind == tSep {
		p.pos++
	}
	if p.pos >= len(p.toks) || p.toks[p.pos].kind != tLBrace {
		return n, fmt.Errorf("line %d: %s without {", n.line, n.words[0].keyword())
	}
	p.pos++
	body, term, err := p.list([]string{"}"})
	if err != nil {
		return n, err
	}
	if term != "}" {
		return n, fmt.Errorf("line %d: %s not closed with }", n.line, n.words[0].keyword())
	}
	n.body = body
	return n, nil
}

func (p *parser) ifNode() (node, error) {
	n := node{kind: nIf, line: p.toks[p.pos].line}
	p.pos++ // if
	for {
		cond, term, err := p.list([]string{"then"})
		if err != nil {
			return n, err
		}
		if term != "then" {
			return n, fmt.Errorf("line %d: if without then", n.line)
		}
		body, term, err := p.list([]string{"elif", "else", "fi"})
		if err != nil {
			return n, err
		}
		n.conds = append(n.conds, cond)
		if len(n.conds) == 1 {
			n.body = body
		} else {
			n.elifs = append(n.elifs, body)
		}
		switch term {
		case "elif":
			continue
		case "else":
			els, term, err := p.list([]string{"fi"})
			if err != nil {
				return n, err
			}
			if term != "fi" {
				return n, fmt.Errorf("line %d: if without fi", n.line)
			}
			n.els, n.hasEl = els, true
			return n, nil
		case "fi":
			return n, nil
		default:
			return n, fmt.Errorf("line %d: if without fi", n.line)
		}
	}
}

func (p *parser) loop() (node, error) {
	n := node{kind: nLoop, line: p.toks[p.pos].line}
	p.pos++
	if _, term, err := p.list([]string{"do"}); err != nil {
		return n, err
	} else if term != "do" {
		return n, fmt.Errorf("line %d: loop without do", n.line)
	}
	body, term, err := p.list([]string{"done"})
	if err != nil {
		return n, err
	}
	if term != "done" {
		return n, fmt.Errorf("line %d: loop without done", n.line)
	}
	n.body = body
	return n, nil
}
