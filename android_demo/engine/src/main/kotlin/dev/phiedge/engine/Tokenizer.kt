package dev.phiedge.engine

import java.io.File

/**
 * BPE tokenizers as the phi models ship them, read from a Hugging Face tokenizer.json (runtime/text.py decodes
 * the same files with `tokenizers`):
 *
 *     text --added tokens split out (leftmost longest)--> pieces --normalizer--> --pre-tokenizer--> words
 *          --symbols (bytes as printable chars, or characters with byte fallback)--> BPE by merge rank --> ids
 *
 * Three kinds, told apart by the file (never by its name):
 * - byte-level BPE with GPT-2's regex (phi-1, phi-1.5, phi-2: CodeGen's tokenizer; the demo);
 * - byte-level BPE after a `Split` regex pre-tokenizer (Phi-4-mini: GPT-4o's pattern);
 * - SentencePiece-style BPE (Phi-3, Phi-3.5: Llama 2's): a normalizer that prepends and replaces "▁", no
 *   pre-tokenizer, characters missing from the vocabulary as `<0xXX>` byte pieces, decoded by
 *   Replace("▁", " ") -> ByteFallback -> Fuse -> Strip(1 leading space).
 *
 * decode() mirrors tokenizers' default decode(ids): special tokens skipped, invalid or incomplete UTF-8 as U+FFFD
 * (Rust's from_utf8_lossy for byte-level; one U+FFFD per byte of a bad byte-piece run for byte fallback).
 * Every regex is written for both java.util.regex and Android's ICU engine: no inline flags, and \s spelled
 * as Unicode's White_Space class (regexFor).
 */
class Tokenizer(
    private val vocab: Map<String, Int>,
    merges: List<Pair<String, String>>,
    val addedTokens: List<AddedToken>,
    private val addPrefixSpace: Boolean = false,
    private val pipeline: Pipeline = Pipeline(),
) {
    data class AddedToken(val id: Int, val content: String, val special: Boolean, val normalized: Boolean)

    /** How text becomes words and ids become text; the default is GPT-2's byte-level BPE. */
    data class Pipeline(
        val normalizer: List<Pair<String, String>> = emptyList(),  // ("prepend", s) or (pattern, replacement)
        val split: java.util.regex.Pattern? = PRETOKENIZE,  // words are its matches and the text between them
        val byteLevel: Boolean = true,  // symbols are bytes as printable chars; false: characters
        val byteFallback: Boolean = false,  // characters missing from the vocabulary become <0xXX> pieces
        val unkId: Int? = null,
        val fuseUnk: Boolean = false,
        val sentencePieceDecoder: Boolean = false,  // Replace("▁", " "), ByteFallback, Fuse, Strip(" ", 1, 0)
    )

    private val ranks = HashMap<String, Int>(merges.size * 2).apply {
        merges.forEachIndexed { rank, (a, b) -> putIfAbsent(a + '\u0000' + b, rank) }
    }
    private val idToToken: Array<String?>
    private val specialIds = addedTokens.filter { it.special }.map { it.id }.toHashSet()
    private val cache = HashMap<String, IntArray>()

    init {
        val size = maxOf(vocab.values.maxOrNull() ?: -1, addedTokens.maxOfOrNull { it.id } ?: -1) + 1
        idToToken = arrayOfNulls(size)
        for ((t, id) in vocab) idToToken[id] = t
        for (t in addedTokens) idToToken[t.id] = t.content
    }

    val vocabSize: Int get() = idToToken.size

    /** Whether [id] is a token (an embedding row past the vocabulary, or a gap in it, is not). */
    fun hasToken(id: Int): Boolean = idToToken.getOrNull(id) != null

    /** The pre-tokenizer regex as compiled (GPT-2's, or the file's Split pattern after regexFor); null: none. */
    val splitPattern: String? get() = pipeline.split?.pattern()

    fun encode(text: String): IntArray {
        val out = ArrayList<Int>()
        // tokenizers splits on tokens matched on the raw text (normalized=false) first, then on the others.
        val raw = addedTokens.filter { !it.normalized }
        val normalized = addedTokens.filter { it.normalized }
        for ((piece, token) in splitAdded(text, raw)) {
            if (token != null) { out.add(token.id); continue }
            for ((inner, t2) in splitAdded(piece, normalized)) {
                if (t2 != null) out.add(t2.id) else encodeOrdinary(inner, out)
            }
        }
        return out.toIntArray()
    }

    fun decode(ids: IntArray, skipSpecial: Boolean = true): String {
        if (pipeline.sentencePieceDecoder) return decodeSentencePiece(ids, skipSpecial)
        val bytes = java.io.ByteArrayOutputStream()
        for (id in ids) {
            if (skipSpecial && id in specialIds) continue
            val token = token(id)
            val mapped = ByteArray(token.length)
            var ok = true
            for ((k, c) in token.withIndex()) {
                val b = CHAR_TO_BYTE[c]
                if (b == null) { ok = false; break }
                mapped[k] = b.toByte()
            }
            bytes.write(if (ok) mapped else token.toByteArray(Charsets.UTF_8))
        }
        return Utf8.decodeLossy(bytes.toByteArray())
    }

    fun decode(ids: List<Int>): String = decode(ids.toIntArray())

    private fun token(id: Int): String = idToToken.getOrNull(id) ?: throw IllegalArgumentException(
        "token id $id is outside the vocabulary of $vocabSize; the ids come from another tokenizer")

    private fun decodeSentencePiece(ids: IntArray, skipSpecial: Boolean): String {
        val out = StringBuilder()
        val pending = java.io.ByteArrayOutputStream()  // a run of <0xXX> pieces
        fun flush() {
            if (pending.size() == 0) return
            val b = pending.toByteArray()
            val text = Utf8.decodeLossy(b)
            out.append(if ('\uFFFD' in text) "\uFFFD".repeat(b.size) else text)  // tokenizers' ByteFallback
            pending.reset()
        }
        for (id in ids) {
            if (skipSpecial && id in specialIds) continue
            val piece = token(id).replace("\u2581", " ")
            val byte = BYTE_PIECE.matchEntire(piece)
            if (byte != null) { pending.write(byte.groupValues[1].toInt(16)); continue }
            flush()
            out.append(piece)
        }
        flush()
        return if (out.startsWith(" ")) out.substring(1) else out.toString()
    }

    /** (piece, null) for ordinary text and ("", token) for an added token; leftmost match first, longest wins. */
    private fun splitAdded(text: String, tokens: List<AddedToken>): List<Pair<String, AddedToken?>> {
        if (tokens.isEmpty() || text.isEmpty()) return listOf(text to null)
        val out = ArrayList<Pair<String, AddedToken?>>()
        var start = 0
        var i = 0
        while (i < text.length) {
            var best: AddedToken? = null
            for (t in tokens) if (text.startsWith(t.content, i) && (best == null || t.content.length > best.content.length)) best = t
            if (best == null) { i++; continue }
            if (i > start) out.add(text.substring(start, i) to null)
            out.add("" to best)
            i += best.content.length
            start = i
        }
        if (start < text.length) out.add(text.substring(start) to null)
        return out
    }

    private fun normalize(text: String): String {
        var s = text
        for ((op, arg) in pipeline.normalizer) {
            s = if (op == PREPEND) (if (s.isEmpty()) s else arg + s) else s.replace(op, arg)
        }
        return s
    }

    private fun encodeOrdinary(text: String, out: MutableList<Int>) {
        if (text.isEmpty()) return
        var input = normalize(text)
        if (addPrefixSpace && input.isNotEmpty() && !input[0].isWhitespace()) input = " $input"
        for (word in words(input)) {
            val ids = cache.getOrPut(word) { bpe(word) }
            for (id in ids) out.add(id)
        }
    }

    /** The pre-tokenizer: the split regex's matches and the text between them, in order. */
    private fun words(text: String): List<String> {
        val split = pipeline.split ?: return listOf(text)
        val out = ArrayList<String>()
        val m = split.matcher(text)
        var last = 0
        while (m.find()) {
            if (m.start() > last) out.add(text.substring(last, m.start()))
            if (m.end() > m.start()) out.add(m.group())
            last = m.end()
        }
        if (last < text.length) out.add(text.substring(last))
        return out
    }

    private fun symbols(word: String): MutableList<String> {
        if (pipeline.byteLevel) {
            val bytes = word.toByteArray(Charsets.UTF_8)
            return MutableList(bytes.size) { BYTE_TO_CHAR[bytes[it].toInt() and 0xff].toString() }
        }
        val out = ArrayList<String>()
        var i = 0
        while (i < word.length) {
            val cp = word.codePointAt(i)
            val c = String(Character.toChars(cp))
            i += c.length
            when {
                c in vocab -> out.add(c)
                pipeline.byteFallback && c.toByteArray(Charsets.UTF_8).all { "<0x%02X>".format(it) in vocab } ->
                    c.toByteArray(Charsets.UTF_8).forEach { out.add("<0x%02X>".format(it)) }
                else -> out.add(UNK)
            }
        }
        if (pipeline.fuseUnk) return out.filterIndexed { k, s -> !(s == UNK && k > 0 && out[k - 1] == UNK) }.toMutableList()
        return out
    }

    private fun bpe(word: String): IntArray {
        var symbols = symbols(word)
        while (symbols.size > 1) {
            var bestRank = Int.MAX_VALUE
            var bestAt = -1
            for (k in 0 until symbols.size - 1) {
                val r = ranks[symbols[k] + '\u0000' + symbols[k + 1]] ?: continue
                if (r < bestRank) { bestRank = r; bestAt = k }
            }
            if (bestAt < 0) break
            val a = symbols[bestAt]
            val b = symbols[bestAt + 1]
            val merged = ArrayList<String>(symbols.size)
            var k = 0
            while (k < symbols.size) {  // merge every occurrence of the pair, left to right
                if (k < symbols.size - 1 && symbols[k] == a && symbols[k + 1] == b) { merged.add(a + b); k += 2 }
                else { merged.add(symbols[k]); k++ }
            }
            symbols = merged
        }
        return IntArray(symbols.size) {
            if (symbols[it] == UNK) pipeline.unkId ?: throw IllegalArgumentException(
                "'$word' holds a character the vocabulary lacks and the tokenizer has no unknown token")
            else vocab[symbols[it]] ?: throw IllegalStateException("BPE produced '${symbols[it]}', which is not in the vocabulary")
        }
    }

    companion object {
        private const val PREPEND = "\u0000prepend"
        private const val UNK = "\u0000unk"
        internal val BYTE_PIECE = Regex("<0x([0-9A-Fa-f]{2})>")  // listed in Regexes.FIXED

        /** Unicode's White_Space characters: what \s means in the Rust (onig) original. */
        private const val WHITE_SPACE = "\\t\\n\\u000B\\f\\r \\u0085\\u00A0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000"

        /** A tokenizer.json regex for java.util.regex and ICU alike: \s and \S become explicit Unicode classes. */
        fun regexFor(pattern: String): java.util.regex.Pattern {
            val out = StringBuilder()
            var inClass = false
            var i = 0
            while (i < pattern.length) {
                val c = pattern[i]
                if (c == '\\' && i + 1 < pattern.length) {
                    val n = pattern[i + 1]
                    when {
                        n == 's' -> out.append(if (inClass) WHITE_SPACE else "[$WHITE_SPACE]")
                        n == 'S' && !inClass -> out.append("[^$WHITE_SPACE]")
                        else -> out.append(c).append(n)
                    }
                    i += 2
                    continue
                }
                if (c == '[' && !inClass) inClass = true else if (c == ']' && inClass) inClass = false
                out.append(c)
                i++
            }
            return java.util.regex.Pattern.compile(out.toString())
        }

        /** GPT-2's pre-tokenizer pattern (phi-1, phi-1.5, phi-2). */
        val PRETOKENIZE: java.util.regex.Pattern =
            regexFor("'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+")

        /** GPT-2's bytes_to_unicode: printable bytes stand for themselves, the rest map to 256 + n. */
        val BYTE_TO_CHAR: CharArray = CharArray(256).also { table ->
            var n = 0
            for (b in 0 until 256) {
                val printable = b in 33..126 || b in 161..172 || b in 174..255
                table[b] = if (printable) b.toChar() else (256 + n++).toChar()
            }
        }
        val CHAR_TO_BYTE: Map<Char, Int> = BYTE_TO_CHAR.withIndex().associate { (b, c) -> c to b }

        fun load(file: File): Tokenizer = try {
            fromJson(file.readText(Charsets.UTF_8))
        } catch (e: IllegalArgumentException) {
            throw IllegalArgumentException("tokenizer $file cannot be read (${e.message}); copy the package again", e)
        }

        @Suppress("UNCHECKED_CAST")
        fun fromJson(text: String): Tokenizer {
            val root = Json.parse(text) as? Map<String, Any?> ?: throw IllegalArgumentException("not a JSON object")
            val model = root.obj("model")
            require(model["type"] == "BPE") { "model type ${model["type"]} is not BPE; only BPE tokenizers are supported" }
            val vocab = model.obj("vocab").mapValues { (it.value as Number).toInt() }
            val merges = model.list("merges").map { m ->
                when (m) {
                    is String -> m.split(' ', limit = 2).let { it[0] to it[1] }  // older "a b" form
                    is List<*> -> m[0] as String to m[1] as String
                    else -> throw IllegalArgumentException("merge $m is neither \"a b\" nor [a, b]")
                }
            }
            val added = (root["added_tokens"] as? List<Map<String, Any?>> ?: emptyList()).map {
                require(it["lstrip"] != true && it["rstrip"] != true && it["single_word"] != true) {
                    "added token ${it["content"]} uses lstrip/rstrip/single_word, which this tokenizer does not support"
                }
                AddedToken(it.int("id"), it.str("content"), it["special"] == true, it["normalized"] == true)
            }
            val (pipeline, addPrefixSpace) = pipelineOf(root, model, vocab)
            return Tokenizer(vocab, merges, added, addPrefixSpace, pipeline)
        }

        @Suppress("UNCHECKED_CAST")
        private fun steps(node: Map<String, Any?>?): List<Map<String, Any?>> = when {
            node == null -> emptyList()
            node["type"] == "Sequence" -> (node["normalizers"] ?: node["pretokenizers"] ?: node["decoders"]
                ?: emptyList<Any>()) as List<Map<String, Any?>>
            else -> listOf(node)
        }

        @Suppress("UNCHECKED_CAST")
        private fun pipelineOf(root: Map<String, Any?>, model: Map<String, Any?>, vocab: Map<String, Int>): Pair<Pipeline, Boolean> {
            val pre = steps(root["pre_tokenizer"] as? Map<String, Any?>)
            val decoders = steps(root["decoder"] as? Map<String, Any?>).map { it["type"] }
            val byteLevel = pre.lastOrNull()?.get("type") == "ByteLevel"
            if (byteLevel) {  // GPT-2 / CodeGen (ByteLevel with its regex) or Phi-4-mini (Split, then ByteLevel)
                require(root["normalizer"] == null) { "byte-level tokenizers with a normalizer are not supported" }
                val level = pre.last()
                val split = when {
                    pre.size == 1 && level["use_regex"] != false -> PRETOKENIZE
                    pre.size == 2 && pre[0]["type"] == "Split" && level["use_regex"] == false -> {
                        val split = pre[0]
                        require(split["behavior"] == "Isolated" && split["invert"] != true) {
                            "a Split pre-tokenizer other than Isolated is not supported" }
                        regexFor((split["pattern"] as Map<String, Any?>)["Regex"] as? String
                            ?: throw IllegalArgumentException("a Split pre-tokenizer needs a Regex pattern"))
                    }
                    else -> throw IllegalArgumentException("pre-tokenizer ${pre.map { it["type"] }} is not supported")
                }
                return Pipeline(split = split) to (level["add_prefix_space"] == true)
            }
            // SentencePiece-style (Llama 2, Phi-3): Prepend/Replace normalizer, no pre-tokenizer, byte fallback.
            require(pre.isEmpty()) { "pre-tokenizer ${pre.map { it["type"] }} is not supported with a normalizer" }
            val normalizer = steps(root["normalizer"] as? Map<String, Any?>).map { n ->
                when (n["type"]) {
                    "Prepend" -> PREPEND to n.str("prepend")
                    "Replace" -> ((n["pattern"] as Map<String, Any?>)["String"] as? String ?: throw IllegalArgumentException(
                        "a Replace normalizer on a regex is not supported")) to n.str("content")
                    else -> throw IllegalArgumentException("normalizer ${n["type"]} is not supported")
                }
            }
            require(decoders == listOf("Replace", "ByteFallback", "Fuse", "Strip")) {
                "decoder $decoders is not the SentencePiece one (Replace, ByteFallback, Fuse, Strip)" }
            val unk = model["unk_token"] as? String
            return Pipeline(normalizer = normalizer, split = null, byteLevel = false,
                byteFallback = model["byte_fallback"] == true, unkId = unk?.let { vocab[it] },
                fuseUnk = model["fuse_unk"] == true, sentencePieceDecoder = true) to false
        }
    }
}

/** UTF-8 decoding that replaces each maximal invalid subpart with one U+FFFD, exactly like Rust's from_utf8_lossy. */
object Utf8 {
    fun decodeLossy(b: ByteArray): String {
        val out = StringBuilder(b.size)
        var i = 0
        while (i < b.size) {
            val c0 = b[i].toInt() and 0xff
            if (c0 < 0x80) { out.append(c0.toChar()); i++; continue }
            val (len, lo, hi) = when (c0) {
                in 0xC2..0xDF -> Triple(2, 0x80, 0xBF)
                0xE0 -> Triple(3, 0xA0, 0xBF)
                in 0xE1..0xEC, 0xEE, 0xEF -> Triple(3, 0x80, 0xBF)
                0xED -> Triple(3, 0x80, 0x9F)
                0xF0 -> Triple(4, 0x90, 0xBF)
                in 0xF1..0xF3 -> Triple(4, 0x80, 0xBF)
                0xF4 -> Triple(4, 0x80, 0x8F)
                else -> Triple(0, 0, 0)
            }
            if (len == 0) { out.append('\uFFFD'); i++; continue }
            var cp = c0 and (0xFF shr (len + 1))
            var k = 1
            while (k < len) {
                if (i + k >= b.size) break
                val c = b[i + k].toInt() and 0xff
                val okRange = if (k == 1) c in lo..hi else c in 0x80..0xBF
                if (!okRange) break
                cp = (cp shl 6) or (c and 0x3F)
                k++
            }
            if (k < len) { out.append('\uFFFD'); i += k; continue }
            out.appendCodePoint(cp)
            i += len
        }
        return out.toString()
    }
}
