package dev.phiedge.android

import dev.phiedge.engine.CancelFlag
import dev.phiedge.engine.ChatSession
import dev.phiedge.engine.ContextPlan
import dev.phiedge.engine.Generation
import dev.phiedge.engine.GenerationCallback
import dev.phiedge.engine.GenerationConfig
import dev.phiedge.engine.Manifest
import dev.phiedge.engine.TextGenerator
import java.io.File

/**
 * What an app embeds: one loaded model package, its context plan, and generate / chat / cancel / stats.
 *
 *     val model = PhiEdge.load(context, folder)            // Android: free memory read from ActivityManager
 *     model.generate("def fib(n):", "code", GenerationConfig(maxNewTokens = 64), callback)   // on a worker thread
 *     model.cancel()                                        // any thread: ends within one prefill chunk or step
 *     model.close()
 *
 * The callback gets text pieces as they come, then the stats (runtime/stats.py's keys), or the error.
 * One generation at a time: calls from several threads take turns on the model's lock (a second caller waits);
 * cancel() stops the one running.
 */
class PhiModel private constructor(val generator: TextGenerator, val plan: ContextPlan) : AutoCloseable {
    val manifest: Manifest get() = generator.manifest

    /** The package's prompt formats, as its manifest names them (completion, code, qa, chat, ...). */
    val templates: List<String> get() = manifest.templates.keys.toList()

    /** The formats that hold a conversation (a "turn" part): [chat] takes these. */
    val chatTemplates: List<String> get() = manifest.templates.filterValues { it.turn != null }.keys.toList()

    @Volatile private var cancel: CancelFlag? = null
    @Volatile private var chat: ChatSession? = null

    /** Continues [prompt] through [template] from an empty cache; null if it failed (the callback has the error). */
    fun generate(prompt: String, template: String, config: GenerationConfig, callback: GenerationCallback): Generation? =
        report(callback) { flag ->
            chat = null
            generator.generate(prompt, chunked(config), template, callback::onText, flag)
        }

    /** The next reply in the conversation kept in the KV cache (the first call starts it with [template]). */
    fun chat(message: String, config: GenerationConfig, callback: GenerationCallback, template: String = "chat"):
        Generation? = report(callback) { flag ->
        val session = chat?.takeIf { it.template == template }
            ?: generator.chat(template, dropOldest = true).also { chat = it }
        session.send(message, chunked(config), callback::onText, flag)
    }

    /** Forgets the conversation: the next [chat] starts a new one. */
    fun resetChat() {
        chat = null
    }

    /** Stops the generation in progress, from any thread: between steps, or inside one (ONNX Runtime terminate). */
    fun cancel() {
        cancel?.set()
        generator.backend.interrupt()
    }

    override fun close() {
        cancel()
        generator.backend.close()
    }

    private fun chunked(config: GenerationConfig) =
        if (config.prefillChunk == 0) config.copy(prefillChunk = PREFILL_CHUNK) else config

    private fun report(callback: GenerationCallback, body: (CancelFlag) -> Generation): Generation? = try {
        generator.exclusive {  // the flag is this call's only once it holds the model: cancel() stops the running one
            val flag = CancelFlag().also { cancel = it }
            try {
                body(flag).also { callback.onStats(it.stats.toJson()) }
            } finally {
                cancel = null
            }
        }
    } catch (e: Exception) {
        callback.onError(e)
        null
    }

    companion object {
        /** Prompt tokens per prefill step unless the config says otherwise: bounds Stop's delay and the logits of
         *  "all" packages (PREFILL_CHUNK x vocab floats). */
        const val PREFILL_CHUNK = 64

        /** The context [folder]'s package would get with [availableBytes] free: show it before loading. */
        fun plan(folder: File, options: EngineOptions = EngineOptions(), availableBytes: Long? = null): ContextPlan =
            plan(Manifest.load(folder), options, availableBytes)

        private fun plan(manifest: Manifest, options: EngineOptions, availableBytes: Long?): ContextPlan {
            val rows = if (manifest.contract.logits == "all") PREFILL_CHUNK else 1 + GenerationConfig().draftTokens
            return ContextPlan.choose(manifest, availableBytes, options.context, rows)
        }

        /**
         * Loads [folder] with ONNX Runtime, the KV cache sized by [ContextPlan] from [availableBytes] (null: the
         * requested or full length) in [memory] (SharedMemoryPool on Android; the model owns and frees it).
         */
        fun load(folder: File, options: EngineOptions = EngineOptions(), availableBytes: Long? = null,
                 memory: NativeMemory = DirectMemory(), verify: Boolean = false): PhiModel {
            var plan: ContextPlan? = null
            val generator = TextGenerator.load(folder, verify) { manifest ->
                val chosen = plan(manifest, options, availableBytes).also { plan = it }
                OrtBackend(manifest, options, chosen.context, memory)
            }
            return PhiModel(generator, plan!!)
        }
    }
}
