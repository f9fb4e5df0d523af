package dev.phiedge.engine

import java.io.File
import java.security.MessageDigest

/**
 * A model package's manifest.json (runtime/manifest.py) and its ONNX I/O contract (runtime/contract.py):
 *
 *     inputs   input_ids                 int64    (batch, sequence_length)
 *              attention_mask            int64    (batch, total_sequence_length)   1 for every real token so far
 *              past_key_values.L.key     kv storage (batch, kv_heads, kv_capacity, kv_width)  (and .value)
 *              logits_to_keep            int64    (1,)   format 2 "last" packages: rows of logits wanted
 *     outputs  logits                    float32  (batch, min(S, logits_to_keep) or sequence_length, vocab)
 *              present.L.key / .value    the same buffers as past (shared in place, never copied)
 *
 * KV dtypes ([KV_DTYPES], runtime/contract.py): float32, float16, int8 and int4 (two values per byte: uint8 buffers
 * of head_dim / 2); the scales of a quantized cache live inside the graph, so the engine only allocates bytes.
 * Nothing is inferred from file names: names, shapes and the KV layout come from the manifest.
 */
data class Contract(
    val nLayers: Int,
    val kvHeads: Int,
    val headDim: Int,
    val vocabSize: Int,
    val kvDtype: String,  // a key of KV_DTYPES
    val logits: String,  // "last" or "all"
    val pastPattern: String = "past_key_values.{layer}.{kind}",
    val presentPattern: String = "present.{layer}.{kind}",
    val logitsToKeep: Boolean = false,  // the graph takes logits_to_keep (format 2 "last" packages)
    val window: Int? = null,  // a sliding-window cache: the keys a query sees (runtime/contract.py), else null
) {
    init {
        require(logits in listOf("last", "all")) { "logits mode '$logits' is unknown; choose last or all" }
        require(kvDtype in KV_DTYPES) { "kv dtype '$kvDtype' is not one of ${KV_DTYPES.keys.joinToString()}" }
        require(window == null || window >= 1) { "I/O contract field window must be a positive integer or null" }
        require(headDim % KV_DTYPES.getValue(kvDtype).perElement == 0) {
            "an $kvDtype KV cache packs ${KV_DTYPES.getValue(kvDtype).perElement} values per byte, which head_dim " +
                "$headDim does not divide" }
    }

    /** The buffers' element dtype: "uint8" for int4. */
    val kvStorage: String get() = KV_DTYPES.getValue(kvDtype).storage

    /** The buffers' last dimension: head_dim, or head_dim / 2 for int4. */
    val kvWidth: Int get() = headDim / KV_DTYPES.getValue(kvDtype).perElement

    /** KV cache bytes one position costs over all layers, keys and values. */
    val kvBytesPerPosition: Long get() = nLayers * 2L * kvHeads * kvWidth * KV_DTYPES.getValue(kvDtype).itemBytes

    /** (batch, kv_heads, capacity, kv_width): the layout "BNSH" of every past/present buffer. */
    fun kvShape(capacity: Int): LongArray = longArrayOf(1, kvHeads.toLong(), capacity.toLong(), kvWidth.toLong())

    /** (past, present) name pairs, layer by layer, key before value. */
    fun kvNames(): List<Pair<String, String>> = (0 until nLayers).flatMap { layer ->
        KV_KINDS.map { kind -> name(pastPattern, layer, kind) to name(presentPattern, layer, kind) }
    }

    /** Whether one step can return logits for several positions (a verify step of speculative decoding). */
    val canStepAll: Boolean get() = logits == "all" || logitsToKeep

    private fun name(pattern: String, layer: Int, kind: String) =
        pattern.replace("{layer}", layer.toString()).replace("{kind}", kind)

    companion object {
        const val INPUT_IDS = "input_ids"
        const val ATTENTION_MASK = "attention_mask"
        const val LOGITS = "logits"
        const val LOGITS_TO_KEEP = "logits_to_keep"
        val KV_KINDS = listOf("key", "value")

        /** A KV dtype's buffer: element dtype, cache values per element, bytes per element. */
        data class KvStorage(val storage: String, val perElement: Int, val itemBytes: Int)

        val KV_DTYPES = mapOf("float32" to KvStorage("float32", 1, 4), "float16" to KvStorage("float16", 1, 2),
            "int8" to KvStorage("int8", 1, 1), "int4" to KvStorage("uint8", 2, 1))
    }
}

/**
 * A prompt format: "{prompt}" is the user's text; [system] (with "{system}") starts a chat with a system message.
 * [trim]: the template strips the user's and the system's text (Jinja's `| trim`: Python's str.strip());
 * [omitEmptySystem]: an empty system message is left out (export/chat_template.py).
 */
data class Template(val prompt: String, val stop: List<String>, val turn: String?, val system: String? = null,
                    val trim: Boolean = false, val omitEmptySystem: Boolean = false) {
    companion object {
        /** What Python's str.strip() removes (runtime/manifest.py TRIM_CHARACTERS); Kotlin's trim() differs. */
        const val TRIM_CHARACTERS = "\t\n\u000b\u000c\r\u001c\u001d\u001e\u001f \u0085\u00a0\u1680\u2000\u2001\u2002" +
            "\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"

        fun pythonStrip(text: String): String = text.trim { it in TRIM_CHARACTERS }
    }
}

class Manifest(
    val folder: File,
    val contract: Contract,
    val maxLength: Int,
    val tokenizerFile: String,
    val bosTokenId: Int?,
    val eosTokenId: Int?,
    val templates: Map<String, Template>,
    val files: Map<String, String>,  // name -> sha256
    val raw: Map<String, Any?>,
    val minOnnxruntime: String? = null,  // oldest onnxruntime that runs the graph (export/compat.py); null: unknown
    val stopTokenIds: List<Int> = listOfNotNull(eosTokenId),  // every id that ends generation, eos first
    val ropeSwitch: Int? = null,  // LongRoPE: past this length the sequence is recomputed (Recompute.kt)
    val sizes: Map<String, Long> = emptyMap(),  // name -> bytes, where the manifest records them
) {
    val modelFile: File get() = File(folder, MODEL)

    /** Query heads (model.num_attention_heads; the kv heads where a manifest lacks it): a run's attention scores. */
    val heads: Int get() = ((raw["model"] as? Map<*, *>)?.get("num_attention_heads") as? Number)?.toInt() ?: contract.kvHeads

    /** Refuses an onnxruntime(-android) [version] older than the package needs, naming both versions. */
    fun checkOnnxruntime(version: String) {
        val need = minOnnxruntime ?: return
        if (compareVersions(version, need) < 0) throw IllegalArgumentException(
            "$folder needs onnxruntime >= $need but the app has $version; build the app with onnxruntime-android " +
                "$need or newer, or re-export the package for an older release (--embedding fp32 --lm-head int4 " +
                "runs on 1.20)")
    }

    /** Bytes of the files ONNX Runtime loads (model.onnx and its external data): what the weights occupy. */
    val weightBytes: Long get() = files.keys.filter { it != tokenizerFile }.sumOf { sizes[it] ?: File(folder, it).length() }

    /** Cheap check that every file has the size the manifest records (a truncated copy fails it). */
    fun verifySizes() {
        for ((name, want) in sizes) {
            val got = File(folder, name).length()
            if (got != want) throw IllegalArgumentException("${File(folder, name)} has $got bytes but $MANIFEST " +
                "records $want: the copy is truncated or the file was changed; copy the package again")
        }
    }

    /** Checks the sha256 of [names] (default: every file, after their sizes). */
    fun verifyChecksums(names: Collection<String> = files.keys) {
        if (names == files.keys) verifySizes()
        for (name in names) {
            val want = files.getValue(name)
            if (sha256(File(folder, name)) != want) throw IllegalArgumentException(
                "${File(folder, name)} does not match its sha256 in $MANIFEST: the file is corrupted or was changed; " +
                    "copy the package again or re-export it")
        }
    }

    /** The template's [part] ("prompt", or "turn" for chat) with the user's text in place of {prompt}; with a
     *  [system] message the first turn uses the template's "system" part (runtime/pipeline.py apply_template). */
    fun applyTemplate(name: String, prompt: String, part: String = "prompt", system: String? = null): String {
        val t = templates[name] ?: throw IllegalArgumentException(
            "template '$name' is not in $folder's manifest; choose one of ${templates.keys.joinToString()}")
        val strip: (String) -> String = if (t.trim) Template::pythonStrip else { s -> s }
        val system = system?.takeUnless { t.omitEmptySystem && strip(it).isEmpty() }  // left out when empty
        val text = when {
            part == "prompt" && system != null -> t.system ?: throw IllegalArgumentException(
                "template '$name' takes no system message")
            part == "prompt" -> t.prompt
            part == "turn" -> t.turn ?: throw IllegalArgumentException(
                "template '$name' has no 'turn' part; chat needs a template with a 'turn' part")
            else -> throw IllegalArgumentException("template part '$part' is not prompt or turn")
        }
        // One pass, so user text holding "{prompt}" or "{system}" stays as typed.
        return PLACEHOLDER.replace(text) { if (it.groupValues[1] == "prompt") strip(prompt) else strip(system.orEmpty()) }
    }

    fun templateStops(name: String): List<String> = templates[name]?.stop ?: emptyList()

    companion object {
        const val FORMAT = "phi-edge-package"
        const val FORMAT_VERSION = 2
        val READABLE_VERSIONS = listOf(1, 2)  // 1: no logits_to_keep input
        const val MANIFEST = "manifest.json"
        const val MODEL = "model.onnx"
        internal val PLACEHOLDER = Regex("\\{(prompt|system)\\}")  // listed in Regexes.FIXED

        /** "1.23.2" vs "1.22.0": numeric parts in order; a suffix such as "-rc1" or "+cpu" is ignored. */
        fun compareVersions(a: String, b: String): Int {
            fun parts(v: String) = v.split("+", "-")[0].split(".").take(3).map { p -> p.takeWhile(Char::isDigit) }
                .takeWhile { it.isNotEmpty() }.map { it.toInt() }
            val x = parts(a)
            val y = parts(b)
            for (i in 0 until maxOf(x.size, y.size)) {
                val c = (x.getOrNull(i) ?: 0).compareTo(y.getOrNull(i) ?: 0)
                if (c != 0) return c
            }
            return 0
        }

        fun sha256(file: File): String {
            val digest = MessageDigest.getInstance("SHA-256")
            file.inputStream().use { input ->
                val buffer = ByteArray(1 shl 20)
                while (true) {
                    val n = input.read(buffer)
                    if (n < 0) break
                    digest.update(buffer, 0, n)
                }
            }
            return digest.digest().joinToString("") { "%02x".format(it) }
        }

        /** Reads and validates a package folder's manifest; [verify] also checks every file's size and sha256;
         *  [checkFiles] false skips the check that every file is present (a package being installed). */
        @Suppress("UNCHECKED_CAST")
        fun load(folder: File, verify: Boolean = false, checkFiles: Boolean = true): Manifest {
            val path = File(folder, MANIFEST)
            if (!folder.isDirectory) throw java.io.FileNotFoundException(
                "model package $folder does not exist; push one (see android_demo/README.md) or use the bundled demo")
            if (!path.isFile) throw java.io.FileNotFoundException(
                "$folder has no $MANIFEST, so it is not a model package; export one with python -m export")
            val d = Json.parse(path.readText()) as? Map<String, Any?>
                ?: throw IllegalArgumentException("$path is not a JSON object; re-export the package")
            if (d["format"] != FORMAT) throw IllegalArgumentException("$path is not a $FORMAT manifest (format ${d["format"]})")
            if ((d["format_version"] as? Number)?.toInt() !in READABLE_VERSIONS) throw IllegalArgumentException(
                "$path has format version ${d["format_version"]} but this app reads versions $READABLE_VERSIONS; " +
                    "re-export the package with the matching version of the project")
            val manifest = try {
                val io = d.obj("io")
                val kv = io.obj("kv_cache")
                val contract = Contract(kv.int("n_layers"), kv.int("kv_heads"), kv.int("head_dim"),
                    d.obj("model").int("vocab_size"), kv.str("dtype"), io.str("logits"),
                    kv["past"] as? String ?: "past_key_values.{layer}.{kind}",
                    kv["present"] as? String ?: "present.{layer}.{kind}",
                    (io["inputs"] as? List<*>)?.any { (it as? Map<*, *>)?.get("name") == Contract.LOGITS_TO_KEEP } == true,
                    kv.intOrNull("window"))
                val storage = kv["storage_dtype"] as? String ?: contract.kvStorage  // absent before quantized caches
                require(storage == contract.kvStorage) { "$path: field 'io.kv_cache.storage_dtype' is $storage but an " +
                    "${contract.kvDtype} cache is stored as ${contract.kvStorage}; re-export the package" }
                val tok = d.obj("tokenizer")
                val templates = d.obj("templates").mapValues { (_, v) ->
                    val t = v as Map<String, Any?>
                    Template(t.str("prompt"), (t["stop"] as? List<String>) ?: emptyList(), t["turn"] as? String,
                        t["system"] as? String, t["trim"] == true, t["omit_empty_system"] == true)
                }
                val files = d.obj("files").mapValues { (_, v) -> (v as Map<String, Any?>).str("sha256") }
                val sizes = d.obj("files").mapNotNull { (k, v) -> ((v as Map<String, Any?>)["bytes"] as? Number)?.let { k to it.toLong() } }.toMap()
                Manifest(folder, contract, d.int("max_length"), tok.str("file"), tok.intOrNull("bos_token_id"),
                    tok.intOrNull("eos_token_id"), templates, files, d, d["min_onnxruntime"] as? String,
                    (tok["stop_token_ids"] as? List<*>)?.map { (it as Number).toInt() }?.takeIf { it.isNotEmpty() }
                        ?: listOfNotNull(tok.intOrNull("eos_token_id")), d.intOrNull("rope_switch"), sizes)
            } catch (e: IllegalArgumentException) {
                throw IllegalArgumentException("$path lacks or mangles a field (${e.message}); re-export the package", e)
            } catch (e: ClassCastException) {
                throw IllegalArgumentException("$path has a field of the wrong type (${e.message}); re-export the package", e)
            }
            val inside = folder.canonicalFile
            if (checkFiles) for (name in listOf(MODEL, manifest.tokenizerFile) + manifest.files.keys) {
                if (!File(folder, name).isFile) throw java.io.FileNotFoundException(
                    "${File(folder, name)} is missing from the package; copy the whole folder")
                val target = File(folder, name).canonicalFile  // ONNX Runtime refuses external data outside too
                if (target.parentFile == null || !target.path.startsWith(inside.path + File.separator))
                    throw IllegalArgumentException("${File(folder, name)} is a link to $target, outside the package " +
                        "folder; put the file itself (or a link to a file inside the folder) there")
            }
            if (verify) manifest.verifyChecksums()
            else if (checkFiles && manifest.tokenizerFile in manifest.files) {  // small; another one fails silently
                manifest.verifyChecksums(listOf(manifest.tokenizerFile))
            }
            return manifest
        }
    }
}
