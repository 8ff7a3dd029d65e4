-- eoe.lua: Wireshark/tshark dissector for the EOE frame of eoe_filter
-- (spec: wire-format.md section 1).
--
-- Load it for one run:
--   tshark -X lua_script:/path/to/eoe.lua -r capture.pcap -Y eoe
--   wireshark -X lua_script:/path/to/eoe.lua capture.pcap
-- or install it for every run:
--   cp eoe.lua ~/.local/lib/wireshark/plugins/
-- (the "Personal Lua Plugins" folder of `tshark -G folders`).
-- As root, Lua scripts load only if the global init.lua sets
-- run_user_scripts_when_superuser = true (it does in Debian's 4.0 package);
-- otherwise run tshark as an unprivileged user, as the tests do.
--
-- An EOE frame is an 802.1Q-tagged 802.3 frame (type field = length), which
-- Wireshark on its own hands to LLC. This script registers a heuristic on
-- the "eth" list, which Ethernet tries before parsing the frame, and claims
-- a frame when all of these hold (the same rule as scapy_eoe.is_eoe_frame):
--   * at least 36 bytes (22-byte header + an inner Ethernet header),
--   * TPID (bytes 12-13) is 0x8100,
--   * length (bytes 16-17) >= 18 and equal to frame length - 18; a frame
--     of at most 60 bytes may carry Ethernet minimum-size padding after it,
--   * bytes 18-20 are not an LLC SNAP (aa aa 03) or STP (42 42 03) header,
--     so PVST+/STP BPDUs in a VLAN stay what they are.
-- Frames it does not claim (e.g. a capture with FCS, or a wrong length
-- field) can be forced with Decode As "Ethertype" 0x8100 -> EOE, which
-- decodes every 0x8100 frame as EOE (eoe.dst/src/tpid then appear as
-- eth.dst/src/type) and flags a length field that does not match the frame
-- (expert info eoe.length.mismatch):
--   tshark -X lua_script:eoe.lua -d ethertype==0x8100,eoe -r capture.pcap
-- The heuristic can be switched off with --disable-heuristic eoe_eth.
-- Capture on the interface itself (not "any"): libpcap puts the VLAN tag
-- that the kernel strips back into the data only for Ethernet link types.

local HDR_LEN = 22           -- EOE header length
local TAG_LEN = 18           -- bytes up to and including the length field
local MIN_FRAME = HDR_LEN + 14
local ETH_MIN_NO_FCS = 60    -- Ethernet minimum frame size without FCS

local eoe = Proto("eoe", "EOE (Ethernet over Ethernet) encapsulation")

local op_codes = {
    [1] = "downstream from switch",
    [8] = "A2A switch",
}

local f = {
    dst = ProtoField.ether("eoe.dst", "Destination"),
    src = ProtoField.ether("eoe.src", "Source"),
    tpid = ProtoField.uint16("eoe.tpid", "TPID", base.HEX),
    tci = ProtoField.uint16("eoe.tci", "TCI", base.HEX),
    pcp = ProtoField.uint16("eoe.pcp", "PCP", base.DEC, nil, 0xe000),
    dei = ProtoField.uint16("eoe.dei", "DEI", base.DEC, nil, 0x1000),
    vid = ProtoField.uint16("eoe.vid", "VID", base.DEC, nil, 0x0fff),
    length = ProtoField.uint16("eoe.length", "Length", base.DEC),
    length_expected = ProtoField.uint16("eoe.length.expected",
        "Length expected from frame size", base.DEC),
    control = ProtoField.uint8("eoe.control", "Control", base.HEX),
    op_code = ProtoField.uint8("eoe.op_code", "Op code", base.DEC, op_codes, 0xf0),
    downstream = ProtoField.bool("eoe.downstream", "Downstream", 8,
        { "Downstream", "Upstream" }, 0x08),
    flag = ProtoField.uint8("eoe.flag", "Flag", base.DEC, nil, 0x07),
    itf = ProtoField.uint16("eoe.itf", "Interface (vlanport)", base.DEC_HEX),
    pon = ProtoField.uint16("eoe.pon", "PON", base.DEC, nil, 0xf000),
    gem_port = ProtoField.uint16("eoe.gem_port", "GEM port", base.DEC, nil, 0x0fff),
    protocol_id = ProtoField.uint8("eoe.protocol_id", "Protocol ID", base.DEC_HEX),
    trailer = ProtoField.bytes("eoe.trailer", "Trailer"),
}
eoe.fields = f

local ef = {
    short = ProtoExpert.new("eoe.short", "Frame too short for an EOE header",
        expert.group.MALFORMED, expert.severity.ERROR),
    mismatch = ProtoExpert.new("eoe.length.mismatch",
        "Length field does not match the frame size",
        expert.group.MALFORMED, expert.severity.WARN),
    padding = ProtoExpert.new("eoe.padding",
        "Ethernet minimum-size padding after the EOE frame",
        expert.group.PROTOCOL, expert.severity.NOTE),
}
eoe.experts = ef

local eth = Dissector.get("eth_withoutfcs")

-- Lua 5.2 (Wireshark 4.0) has bit32 but no bitwise operators, Lua 5.4
-- (Wireshark 4.4+) the reverse: arithmetic works in both.
local function bits(value, shift, width)
    return math.floor(value / 2 ^ shift) % 2 ^ width
end

-- Dissects an EOE header whose TCI is at offset tci_off of tvb: 14 for a
-- whole frame (heuristic), 0 after Ethernet has consumed dst/src/TPID
-- (Decode As on "ethertype" 0x8100).
local function dissect(tvb, pinfo, tree, tci_off)
    pinfo.cols.protocol:set("EOE")
    local hdr_len = HDR_LEN - 14 + tci_off
    local captured = tvb:len()
    local root = tree:add(eoe, tvb(0, math.min(hdr_len, captured)))
    if captured < hdr_len then
        root:add_proto_expert_info(ef.short)
        return captured
    end

    if tci_off == 14 then
        root:add(f.dst, tvb(0, 6))
        root:add(f.src, tvb(6, 6))
        root:add(f.tpid, tvb(12, 2))
    end
    local tci = root:add(f.tci, tvb(tci_off, 2))
    tci:add(f.pcp, tvb(tci_off, 2))
    tci:add(f.dei, tvb(tci_off, 2))
    tci:add(f.vid, tvb(tci_off, 2))

    local len_off = tci_off + 2
    local length = tvb(len_off, 2):uint()
    local after = tvb:reported_len() - len_off - 2  -- bytes after the length field
    local len_item = root:add(f.length, tvb(len_off, 2))
    len_item:add(f.length_expected, after):set_generated()

    local ctl_off = len_off + 2
    local ctl = root:add(f.control, tvb(ctl_off, 1))
    ctl:add(f.op_code, tvb(ctl_off, 1))
    ctl:add(f.downstream, tvb(ctl_off, 1))
    ctl:add(f.flag, tvb(ctl_off, 1))
    local itf = root:add(f.itf, tvb(ctl_off + 1, 2))
    itf:add(f.pon, tvb(ctl_off + 1, 2))
    itf:add(f.gem_port, tvb(ctl_off + 1, 2))
    root:add(f.protocol_id, tvb(ctl_off + 3, 1))

    -- The length field counts the 4 control bytes plus the inner frame.
    local inner_len = captured - hdr_len
    if length < 4 or length > after then
        len_item:add_proto_expert_info(ef.mismatch,
            string.format("Length field %d does not match the %d bytes after it",
                length, after))
    elseif length < after then
        inner_len = math.min(inner_len, length - 4)
        if after + TAG_LEN <= ETH_MIN_NO_FCS then
            len_item:add_proto_expert_info(ef.padding)
        else
            len_item:add_proto_expert_info(ef.mismatch,
                string.format("Length field %d leaves %d unexplained bytes",
                    length, after - length))
        end
        if hdr_len + inner_len < captured then
            root:add(f.trailer, tvb(hdr_len + inner_len))
        end
    end

    local vid = bits(tvb(tci_off, 2):uint(), 0, 12)
    local control = tvb(ctl_off, 1):uint()
    local op = bits(control, 4, 4)
    local itf_value = tvb(ctl_off + 1, 2):uint()
    root:append_text(string.format(", Op: %s (%d), %s, VID: %d, Itf: 0x%04x",
        op_codes[op] or "unknown", op,
        bits(control, 3, 1) == 1 and "downstream" or "upstream", vid, itf_value))
    pinfo.cols.info:set(string.format("EOE op %d vid %d itf 0x%04x: ", op, vid, itf_value))
    pinfo.cols.info:fence()

    if inner_len > 0 then
        eth:call(tvb(hdr_len, inner_len):tvb(), pinfo, tree)
    end
    return captured
end

-- Called through Decode As, after Ethernet has read dst, src and TPID.
function eoe.dissector(tvb, pinfo, tree)
    return dissect(tvb, pinfo, tree, 0)
end

-- True when the frame is EOE by the rule in the header comment.
local function looks_like_eoe(tvb)
    local frame_len = tvb:reported_len()
    if frame_len < MIN_FRAME or tvb:len() < HDR_LEN then
        return false
    end
    if tvb(12, 2):uint() ~= 0x8100 then
        return false
    end
    local length = tvb(16, 2):uint()
    local after = frame_len - TAG_LEN
    if length < 4 + 14 then
        return false
    end
    if length ~= after and not (length < after and frame_len <= ETH_MIN_NO_FCS) then
        return false
    end
    local llc = tvb(18, 3):uint()
    return llc ~= 0xaaaa03 and llc ~= 0x424203
end

local function heuristic(tvb, pinfo, tree)
    if not looks_like_eoe(tvb) then
        return false
    end
    dissect(tvb, pinfo, tree, 14)
    return true
end

eoe:register_heuristic("eth", heuristic)
DissectorTable.get("ethertype"):add_for_decode_as(eoe)

-- EtherType 0x08ab: the switch's internal control protocol, which the
-- forwarder's -F filter keeps off the TAP side (spec section 1); naming it
-- makes it easy to spot in a capture.
local eoe_ctl = Proto("eoe_ctl", "EOE internal control")
local f_ctl_data = ProtoField.bytes("eoe_ctl.data", "Data")
eoe_ctl.fields = { f_ctl_data }

function eoe_ctl.dissector(tvb, pinfo, tree)
    pinfo.cols.protocol:set("EOE-CTL")
    pinfo.cols.info:set("Internal control (EtherType 0x08ab)")
    tree:add(eoe_ctl, tvb()):add(f_ctl_data, tvb())
    return tvb:len()
end

DissectorTable.get("ethertype"):add(0x08ab, eoe_ctl)
