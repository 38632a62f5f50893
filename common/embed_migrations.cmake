# Generates a .cpp that embeds services/<svc>/migrations/NNNN_name.sql into the
# binary, so an image needs nothing but the executable.
#   -DSVC=auth -DDIR=<migrations dir> -DOUT=<file.cpp>
file(GLOB files RELATIVE ${DIR} ${DIR}/*.sql)
list(SORT files)
set(body "")
set(last 0)
foreach(f ${files})
  if(NOT f MATCHES "^([0-9][0-9][0-9][0-9])_([a-z0-9_]+)\\.sql$")
    message(FATAL_ERROR "migration ${DIR}/${f} must be named NNNN_name.sql")
  endif()
  math(EXPR version "${CMAKE_MATCH_1}")
  set(name ${CMAKE_MATCH_2})
  if(NOT version GREATER last)
    message(FATAL_ERROR "migration ${f}: versions must increase without duplicates")
  endif()
  set(last ${version})
  file(READ ${DIR}/${f} sql)
  string(APPEND body "      {${version}, \"${name}\", R\"tollgate_sql(${sql})tollgate_sql\"},\n")
endforeach()
file(WRITE ${OUT}.tmp "// Generated from ${DIR}; do not edit.
#include \"tollgate/pg.h\"

namespace tollgate::${SVC} {

const std::vector<Migration>& Migrations() {
  static const std::vector<Migration> kMigrations = {
${body}  };
  return kMigrations;
}

}  // namespace tollgate::${SVC}
")
execute_process(COMMAND ${CMAKE_COMMAND} -E copy_if_different ${OUT}.tmp ${OUT})
