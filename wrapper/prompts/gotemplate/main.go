// Command gotemplate renders an Ollama TEMPLATE with Go's text/template the way
// Ollama's chat endpoint feeds it, and reads a Modelfile the way Ollama's parser
// does, so ftw can check both without an Ollama binary. Standard library only.
//
//	gotemplate render     < {"template": T, "system": S, "cases": [{"messages": [...], "think": null|bool}]}
//	gotemplate modelfile  < Modelfile text
//
// Both print one JSON object on stdout. The behaviour mirrored here (written from
// reading Ollama's server/routes.go, template/template.go, thinking/template.go and
// parser/parser.go; no code copied) is listed next to each function.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/template"
	"text/template/parse"
	"unicode/utf8"
)

// Message has the fields of Ollama's api.Message that a TEMPLATE can name, so a
// template that reads .Thinking or .ToolCalls behaves as it would in Ollama.
type Message struct {
	Role       string `json:"role"`
	Content    string `json:"content"`
	Thinking   string `json:"thinking,omitempty"`
	Images     []any  `json:"images,omitempty"`
	ToolCalls  []any  `json:"tool_calls,omitempty"`
	ToolName   string `json:"tool_name,omitempty"`
	ToolCallID string `json:"tool_call_id,omitempty"`
}

type renderCase struct {
	Messages []Message `json:"messages"`
	Think    *bool     `json:"think"`
}

type renderRequest struct {
	Template string       `json:"template"`
	System   string       `json:"system"` // the Modelfile's SYSTEM
	Cases    []renderCase `json:"cases"`
}

type renderResult struct {
	Prompt string `json:"prompt,omitempty"`
	Error  string `json:"error,omitempty"`
}

type renderResponse struct {
	ThinkingCapable bool           `json:"thinking_capable"`
	ThinkingTags    [2]string      `json:"thinking_tags"`
	Results         []renderResult `json:"results"`
}

// Ollama parses TEMPLATEs with missingkey=zero and one extra function, json.
func parseTemplate(text string) (*template.Template, error) {
	funcs := template.FuncMap{"json": func(v any) string {
		b, _ := json.Marshal(v)
		return string(b)
	}}
	return template.New("").Option("missingkey=zero").Funcs(funcs).Parse(text)
}

// usesField reports whether any node below n names the field (as .Field or $x.Field).
func usesField(n parse.Node, field string) bool {
	found := false
	walk(n, nil, func(node parse.Node, _ []parse.Node) {
		if f, ok := node.(*parse.FieldNode); ok && len(f.Ident) > 0 && f.Ident[0] == field {
			found = true
		}
	})
	return found
}

// walk visits every node with the list of its ancestors.
func walk(n parse.Node, ancestors []parse.Node, visit func(parse.Node, []parse.Node)) {
	if n == nil {
		return
	}
	visit(n, ancestors)
	ancestors = append(ancestors, n)
	switch x := n.(type) {
	case *parse.ListNode:
		for _, c := range x.Nodes {
			walk(c, ancestors, visit)
		}
	case *parse.IfNode:
		walkBranch(&x.BranchNode, ancestors, visit)
	case *parse.RangeNode:
		walkBranch(&x.BranchNode, ancestors, visit)
	case *parse.WithNode:
		walkBranch(&x.BranchNode, ancestors, visit)
	case *parse.ActionNode:
		walk(x.Pipe, ancestors, visit)
	case *parse.TemplateNode:
		walk(x.Pipe, ancestors, visit)
	case *parse.PipeNode:
		for _, c := range x.Cmds {
			walk(c, ancestors, visit)
		}
	case *parse.CommandNode:
		for _, a := range x.Args {
			walk(a, ancestors, visit)
		}
	}
}

func walkBranch(b *parse.BranchNode, ancestors []parse.Node, visit func(parse.Node, []parse.Node)) {
	// walk has already put the if/range/with node itself in ancestors.
	if b.Pipe != nil {
		walk(b.Pipe, ancestors, visit)
	}
	walk(b.List, ancestors, visit)
	if b.ElseList != nil {
		walk(b.ElseList, ancestors, visit)
	}
}

// thinkingTags: Ollama calls a model thinking-capable when its TEMPLATE names
// .Thinking inside a range over .Messages; the text at the start and end of the
// innermost list around that reference are taken as the opening and closing tags.
func thinkingTags(t *template.Template) (string, string) {
	open, close := "", ""
	walk(t.Tree.Root, nil, func(n parse.Node, ancestors []parse.Node) {
		f, ok := n.(*parse.FieldNode)
		if !ok || len(f.Ident) == 0 || f.Ident[0] != "Thinking" {
			return
		}
		var inRange *parse.RangeNode
		for i := len(ancestors) - 1; i >= 0 && inRange == nil; i-- {
			inRange, _ = ancestors[i].(*parse.RangeNode)
		}
		if inRange == nil || !usesField(inRange.Pipe, "Messages") {
			return
		}
		for i := len(ancestors) - 1; i >= 0; i-- {
			list, ok := ancestors[i].(*parse.ListNode)
			if !ok || len(list.Nodes) == 0 {
				continue
			}
			if text, ok := list.Nodes[0].(*parse.TextNode); ok {
				open = strings.TrimSpace(string(text.Text))
			}
			if text, ok := list.Nodes[len(list.Nodes)-1].(*parse.TextNode); ok {
				close = strings.TrimSpace(string(text.Text))
			}
			break
		}
	})
	return open, close
}

// collate: Ollama merges consecutive messages of one role (tool messages excepted)
// with a blank line, and joins all system messages into .System the same way.
func collate(msgs []Message) (string, []*Message) {
	var system []string
	var out []*Message
	for i := range msgs {
		m := msgs[i]
		if m.Role == "system" {
			system = append(system, m.Content)
		}
		if len(out) > 0 && out[len(out)-1].Role == m.Role && m.Role != "tool" {
			out[len(out)-1].Content += "\n\n" + m.Content
			continue
		}
		out = append(out, &m)
	}
	return strings.Join(system, "\n\n"), out
}

func renderOne(t *template.Template, capable bool, modelSystem string, c renderCase) (string, error) {
	msgs := c.Messages
	if len(msgs) == 0 {
		return "", errors.New("no messages")
	}
	// The chat handler puts the Modelfile's SYSTEM first when the request brings none.
	if msgs[0].Role != "system" && modelSystem != "" {
		msgs = append([]Message{{Role: "system", Content: modelSystem}}, msgs...)
	}
	// think: unset means "on" for a thinking-capable model; asking a model that is
	// not thinking-capable to think is an error.
	think, isSet := false, c.Think != nil
	if isSet {
		think = *c.Think
		if think && !capable {
			return "", errors.New("model does not support thinking")
		}
	} else if capable {
		think, isSet = true, true
	}
	system, collated := collate(msgs)
	var b bytes.Buffer
	err := t.Execute(&b, map[string]any{
		"System": system, "Messages": collated, "Tools": nil, "Response": "",
		"Think": think, "ThinkLevel": "", "IsThinkSet": isSet,
		"Query": "", "Document": "", "Instruction": "",
	})
	return b.String(), err
}

func render(in io.Reader, out io.Writer) error {
	var req renderRequest
	if err := json.NewDecoder(in).Decode(&req); err != nil {
		return fmt.Errorf("reading the request: %w", err)
	}
	t, err := parseTemplate(req.Template)
	if err != nil {
		return fmt.Errorf("TEMPLATE does not parse: %w", err)
	}
	if !usesField(t.Tree.Root, "Messages") {
		// Ollama falls back to a per-turn legacy mode for such templates; ftw's never do.
		return errors.New("TEMPLATE does not use .Messages")
	}
	open, close := thinkingTags(t)
	resp := renderResponse{ThinkingCapable: open != "" && close != "", ThinkingTags: [2]string{open, close}}
	for _, c := range req.Cases {
		prompt, err := renderOne(t, resp.ThinkingCapable, req.System, c)
		if err != nil {
			resp.Results = append(resp.Results, renderResult{Error: err.Error()})
		} else {
			resp.Results = append(resp.Results, renderResult{Prompt: prompt})
		}
	}
	return json.NewEncoder(out).Encode(resp)
}

// ---- Modelfile ----------------------------------------------------------------
//
// Ollama's grammar: a command name, blanks, then a value that runs to the end of the
// line, or past line ends while it is an unterminated "..." or """...""" string.
// There are no escapes. Runes that strconv.IsPrint rejects are dropped, except blanks
// and line ends inside a value. The value is trimmed, then one level of quotes removed.

type command struct {
	Name string `json:"name"`
	Args string `json:"args"`
}

var commands = map[string]bool{"from": true, "license": true, "template": true, "system": true, "adapter": true,
	"draft": true, "renderer": true, "parser": true, "parameter": true, "message": true, "requires": true}

func unquote(s string) (string, bool) {
	if strings.HasPrefix(s, `"""`) {
		if len(s) >= 6 && strings.HasSuffix(s, `"""`) {
			return s[3 : len(s)-3], true
		}
		return "", false
	}
	if strings.HasPrefix(s, `"`) {
		if len(s) >= 2 && strings.HasSuffix(s, `"`) {
			return s[1 : len(s)-1], true
		}
		return "", false
	}
	return s, true
}

func isBlank(r rune) bool   { return r == ' ' || r == '\t' }
func isNewline(r rune) bool { return r == '\r' || r == '\n' }
func isLetter(r rune) bool  { return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' }

type modelfileParser struct {
	line     int
	state    string // "", "comment", "name", "param", "role", "value"
	buf      strings.Builder
	cmd      command
	role     string
	commands []command
}

func (p *modelfileParser) fail(msg string) error { return fmt.Errorf("(line %d): %s", p.line, msg) }

// finishValue ends the current value if it is complete; it reports whether it was.
func (p *modelfileParser) finishValue() bool {
	s, ok := unquote(strings.TrimSpace(p.buf.String()))
	if !ok {
		return false
	}
	if p.role != "" {
		s, p.role = p.role+": "+s, ""
	}
	p.cmd.Args = s
	p.commands = append(p.commands, p.cmd)
	p.buf.Reset()
	p.state = ""
	return true
}

func (p *modelfileParser) endName(name string) error {
	lower := strings.ToLower(name)
	if !commands[lower] {
		return p.fail("unknown command " + strconv.Quote(name))
	}
	p.buf.Reset()
	switch lower {
	case "from":
		p.cmd, p.state = command{Name: "model"}, "value"
	case "parameter":
		p.state = "param"
	case "message":
		p.cmd, p.state = command{Name: "message"}, "role"
	default:
		p.cmd, p.state = command{Name: lower}, "value"
	}
	return nil
}

func (p *modelfileParser) feed(r rune) error {
	if isNewline(r) {
		p.line++
	}
	switch p.state {
	case "":
		switch {
		case r == '#':
			p.state = "comment"
		case isBlank(r) || isNewline(r):
		default:
			p.state = "name"
			p.buf.WriteRune(r)
		}
	case "comment":
		if isNewline(r) {
			p.state = ""
		}
	case "name":
		switch {
		case isLetter(r):
			p.buf.WriteRune(r)
		case isBlank(r):
			return p.endName(p.buf.String())
		default:
			return p.fail("a command name is letters only")
		}
	case "param":
		switch {
		case isLetter(r) || (r >= '0' && r <= '9') || r == '_':
			p.buf.WriteRune(r)
		case isBlank(r):
			p.cmd, p.state = command{Name: p.buf.String()}, "value"
			p.buf.Reset()
		default:
			return p.fail("unexpected character in a PARAMETER name")
		}
	case "role":
		switch {
		case isLetter(r):
			p.buf.WriteRune(r)
		case isBlank(r):
			role := p.buf.String()
			if role != "system" && role != "user" && role != "assistant" {
				return p.fail("message role must be system, user or assistant")
			}
			p.role, p.state = role, "value"
			p.buf.Reset()
		default:
			return p.fail("unexpected character in a MESSAGE role")
		}
	case "value":
		if isNewline(r) && p.finishValue() {
			return nil
		}
		if isBlank(r) || isNewline(r) || strconv.IsPrint(r) {
			p.buf.WriteRune(r)
		}
	}
	return nil
}

func parseModelfile(in io.Reader) ([]command, error) {
	data, err := io.ReadAll(in)
	if err != nil {
		return nil, err
	}
	data = bytes.TrimPrefix(data, []byte("\xef\xbb\xbf"))
	if !utf8.Valid(data) {
		return nil, errors.New("the Modelfile is not valid UTF-8")
	}
	p := &modelfileParser{line: 1}
	reader := bufio.NewReader(bytes.NewReader(data))
	for {
		r, _, err := reader.ReadRune()
		if err == io.EOF {
			break
		}
		if err := p.feed(r); err != nil {
			return nil, err
		}
	}
	switch p.state {
	case "", "comment":
	case "value":
		if !p.finishValue() {
			return nil, errors.New("unexpected end of file inside a quoted value")
		}
	default:
		return nil, errors.New("unexpected end of file")
	}
	for _, c := range p.commands {
		if c.Name == "model" {
			return p.commands, nil
		}
	}
	return nil, errors.New("no FROM line")
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: gotemplate render|modelfile < input")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "render":
		err = render(os.Stdin, os.Stdout)
	case "modelfile":
		var cmds []command
		if cmds, err = parseModelfile(os.Stdin); err == nil {
			err = json.NewEncoder(os.Stdout).Encode(map[string]any{"commands": cmds})
		}
	default:
		err = fmt.Errorf("unknown mode %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
