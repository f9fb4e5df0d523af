package dev.phiedge.demo

import android.app.Application
import androidx.lifecycle.AndroidViewModel
import androidx.lifecycle.LiveData
import androidx.lifecycle.MutableLiveData
import dev.phiedge.android.EngineOptions
import dev.phiedge.android.PhiEdge
import dev.phiedge.android.PhiModel
import dev.phiedge.engine.GenerationCallback
import dev.phiedge.engine.GenerationConfig
import dev.phiedge.engine.StatsKeys
import java.util.concurrent.Executors

/**
 * The screen's state and the loaded model, kept across rotation (the Activity is recreated, this is not): the
 * output so far, the stats line, the context plan, whether a generation runs. Loads and generates on one worker
 * thread; the Activity only renders these LiveData and forwards clicks.
 */
class ChatViewModel(app: Application) : AndroidViewModel(app), GenerationCallback {
    private val app: Application get() = getApplication()
    private val worker = Executors.newSingleThreadExecutor()
    private var model: PhiModel? = null
    private var loadedKey: String? = null
    private val text = StringBuilder()  // guarded by itself: the worker appends, the main thread starts turns
    @Volatile private var chatFormats: List<String> = listOf("chat")  // the selected package's templates with a turn

    private val _output = MutableLiveData("")
    private val _stats = MutableLiveData("")
    private val _plan = MutableLiveData("")
    private val _running = MutableLiveData(false)
    private val _templates = MutableLiveData<List<String>>(emptyList())
    val output: LiveData<String> = _output
    val stats: LiveData<String> = _stats
    val plan: LiveData<String> = _plan  // what context was chosen and why, shown before and after loading
    val running: LiveData<Boolean> = _running
    val templates: LiveData<List<String>> = _templates  // the selected package's prompt formats, from its manifest

    /** Reads the package's manifest and plan (no model load): fills the template list and the plan line. */
    fun select(name: String, options: EngineOptions) = worker.execute {
        try {
            val folder = Packages.folder(app, name) { done, total ->
                _plan.postValue(app.getString(R.string.installing, (100 * done / maxOf(total, 1L)).toInt()))
            }
            val manifest = dev.phiedge.engine.Manifest.load(folder)
            chatFormats = manifest.templates.filterValues { it.turn != null }.keys.toList()
            _templates.postValue(manifest.templates.keys.toList())
            _plan.postValue(PhiEdge.plan(app, folder, options).describe())
        } catch (e: Exception) {
            onError(e)
        }
    }

    fun start(name: String, template: String, prompt: String, options: EngineOptions, config: GenerationConfig) {
        if (_running.value == true) return
        _running.value = true
        _output.value = synchronized(text) {
            if (template !in chatFormats) text.setLength(0)
            else text.append(if (text.isEmpty()) "" else "\n\n").append("> ").append(prompt).append("\n")
            text.toString()
        }
        _stats.value = app.getString(R.string.loading)
        worker.execute {
            try {
                val key = "$name/$options"
                if (loadedKey != key) {
                    model?.close()
                    model = null
                    loadedKey = null
                    val folder = Packages.folder(app, name)
                    model = PhiEdge.load(app, folder, options)
                    loadedKey = key
                    _plan.postValue(model!!.plan.describe())
                }
                val m = model!!
                if (template in m.chatTemplates) m.chat(prompt, config, this, template)
                else m.generate(prompt, template, config, this)
            } catch (e: Exception) {
                onError(e)
            }
            _running.postValue(false)
        }
    }

    /** Stop: ends the prompt's prefill within one chunk, or decoding within one step. */
    fun cancel() {
        model?.cancel()
    }

    /** New chat: forget the conversation and the output. */
    fun resetChat() = worker.execute {
        model?.resetChat()
        synchronized(text) { text.setLength(0) }
        _output.postValue("")
    }

    override fun onText(piece: String) {
        _output.postValue(synchronized(text) { text.append(piece).toString() })
    }

    override fun onStats(stats: Map<String, Any?>) {
        fun num(key: String, scale: Double = 1.0, digits: Int = 1) =
            (stats[key] as? Number)?.let { "%.${digits}f".format(it.toDouble() * scale) } ?: "-"
        _stats.postValue("TTFT ${num(StatsKeys.TTFT_S, 1000.0)} ms · ${num(StatsKeys.DECODE_TOKENS_PER_S)} tok/s · " +
            "${num(StatsKeys.CPU_S_PER_TOKEN, 1000.0, 2)} CPU ms/token · " +
            "${num(StatsKeys.PEAK_RSS_BYTES, 1.0 / (1 shl 20), 0)} MiB · ${stats[StatsKeys.FINISH_REASON]}")
    }

    override fun onError(error: Throwable) {
        _stats.postValue(app.getString(R.string.error, error.message ?: error.toString()))
    }

    override fun onCleared() {
        model?.cancel()
        worker.execute { model?.close(); model = null }
        worker.shutdown()
    }
}
